//! MQTT 5.0 topic aliases both ways and the client's Maximum Packet Size (issue 8), through
//! rumqttc's v5 codec (`rumqttc::v5::mqttbytes`, independent of ringmq's) over raw TCP, and a
//! 3.1.1 client written byte by byte; on 1 shard and on 4 with publisher and subscriber homed
//! on different shards.

mod common;

use std::collections::HashMap;

use common::v5::{connect, V5Client};
use common::*;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet, PubAck, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;

fn connect_properties(
    topic_alias_max: Option<u16>,
    max_packet_size: Option<u32>,
    session_expiry_secs: Option<u32>,
) -> ConnectProperties {
    ConnectProperties {
        topic_alias_max,
        max_packet_size,
        session_expiry_interval: session_expiry_secs,
        ..ConnectProperties::new()
    }
}

fn publish(topic: &str, qos: QoS, payload: &[u8], alias: Option<u16>) -> Publish {
    let properties = alias.map(|alias| PublishProperties {
        topic_alias: Some(alias),
        ..PublishProperties::default()
    });
    let mut publish = Publish::new(topic, qos, payload.to_vec(), properties);
    if qos != QoS::AtMostOnce {
        publish.pkid = 1;
    }
    publish
}

fn alias_of(publish: &Publish) -> Option<u16> {
    publish.properties.as_ref().and_then(|p| p.topic_alias)
}

fn topic_of(publish: &Publish) -> &str {
    std::str::from_utf8(&publish.topic).expect("UTF-8 topic")
}

/// The client's side of outbound aliases: what each PUBLISH's topic is, by the rules.
#[derive(Default)]
struct ClientAliases(HashMap<u16, String>);

impl ClientAliases {
    fn topic(&mut self, publish: &Publish, alias_max: u16) -> String {
        match (topic_of(publish), alias_of(publish)) {
            (topic, None) => {
                assert!(!topic.is_empty(), "an empty topic needs an alias");
                topic.to_string()
            }
            (topic, Some(alias)) => {
                // [MQTT-3.3.2-10] Never over what the client allowed.
                assert!(
                    alias >= 1 && alias <= alias_max,
                    "alias {alias} of {alias_max}"
                );
                if topic.is_empty() {
                    self.0
                        .get(&alias)
                        .unwrap_or_else(|| panic!("alias {alias} never set"))
                        .clone()
                } else {
                    self.0.insert(alias, topic.to_string());
                    topic.to_string()
                }
            }
        }
    }
}

const SHARD_COUNTS: [usize; 2] = [1, 4];

// ---------------------------------------------------------------------------------------------
// Inbound: the client's aliases
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_connack_topic_alias_maximum_is_the_limit_and_absent_at_0() {
    let broker = start_broker();
    let (_client, frame) = V5Client::connect_accepted(
        broker.addr(),
        connect(&unique_id("alias-connack"), true, None),
    );
    let Some(Packet::ConnAck(ack)) = frame.packet else {
        panic!("{frame:?}");
    };
    assert_eq!(
        ack.properties.expect("properties").topic_alias_max,
        Some(10)
    );

    let broker = broker_with(|c| c.limits.topic_alias_max = 0);
    let (_client, frame) = V5Client::connect_accepted(
        broker.addr(),
        connect(&unique_id("alias-connack"), true, None),
    );
    let Some(Packet::ConnAck(ack)) = frame.packet else {
        panic!("{frame:?}");
    };
    // 3.2.2.3.8: absent means 0, no alias allowed.
    assert_eq!(ack.properties.expect("properties").topic_alias_max, None);
}

/// A v5 publisher sets, reuses and replaces aliases; a v5 subscriber that allows no aliases
/// and a 3.1.1 subscriber get every message with its full topic and no alias
/// [MQTT-3.3.2-12] (an alias is one hop's).
fn inbound_aliases_set_reuse_replace(shards: usize) {
    let broker = broker_with(|c| c.shards = shards);
    let topic_a = unique_topic("alias/a");
    let topic_b = unique_topic("alias/b");
    let filter = format!("{}/#", topic_a.split('/').next().expect("a level"));
    let mut v5_sub = V5Client::connect_props(
        broker.addr(),
        &unique_id_on(shards - 1, shards, "alias-v5-sub"),
        ConnectProperties::new(),
    );
    v5_sub.subscribe(&filter, QoS::AtLeastOnce);
    let mut v3_sub = RawClient::connect(
        broker.addr(),
        &unique_id_on(shards / 2, shards, "alias-v3-sub"),
    );
    v3_sub.subscribe(1, &[(&filter, 1)]);
    let mut publisher = V5Client::connect_props(
        broker.addr(),
        &unique_id_on(0, shards, "alias-pub"),
        ConnectProperties::new(),
    );
    let (topic_a, topic_b) = (topic_a.as_str(), topic_b.as_str());
    let sends: [(&str, Option<u16>, QoS, &str); 7] = [
        (topic_a, Some(1), QoS::AtMostOnce, topic_a),
        ("", Some(1), QoS::AtMostOnce, topic_a),
        ("", Some(1), QoS::AtLeastOnce, topic_a),
        // Replaced: alias 1 now names B.
        (topic_b, Some(1), QoS::AtLeastOnce, topic_b),
        ("", Some(1), QoS::ExactlyOnce, topic_b),
        (topic_a, Some(10), QoS::AtMostOnce, topic_a),
        ("", Some(10), QoS::AtLeastOnce, topic_a),
    ];
    for (n, &(topic, alias, qos, expected)) in sends.iter().enumerate() {
        let payload = format!("m{n}");
        publisher.send(Packet::Publish(publish(
            topic,
            qos,
            payload.as_bytes(),
            alias,
        )));
        let got = v5_sub.receive();
        assert_eq!(
            (topic_of(&got), &got.payload[..], alias_of(&got)),
            (expected, payload.as_bytes(), None),
            "v5 subscriber, send {n}"
        );
        let got = v3_sub.read_publish();
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            (expected, payload.as_bytes()),
            "3.1.1 subscriber, send {n}"
        );
        if let Some(id) = got.packet_id {
            v3_sub.send(&puback_bytes(id));
        }
    }
    publisher.sync();
}

#[test]
fn issue8_inbound_aliases_set_reuse_replace_on_1_and_4_shards() {
    for shards in SHARD_COUNTS {
        inbound_aliases_set_reuse_replace(shards);
    }
}

#[test]
fn issue8_inbound_alias_0_or_over_the_maximum_is_0x94() {
    let broker = broker_with(|c| c.limits.topic_alias_max = 5);
    // [MQTT-3.3.2-8] Alias 0 is not permitted; rumqttc writes what it is given.
    let mut client = V5Client::connect_props(
        broker.addr(),
        &unique_id("alias-zero"),
        ConnectProperties::new(),
    );
    client.send(Packet::Publish(publish(
        "t",
        QoS::AtMostOnce,
        b"x",
        Some(0),
    )));
    assert_eq!(client.expect_disconnect(), 0x94, "Topic Alias invalid");
    // [MQTT-3.3.2-9] Over the Topic Alias Maximum the CONNACK gave (5).
    let mut client = V5Client::connect_props(
        broker.addr(),
        &unique_id("alias-over"),
        ConnectProperties::new(),
    );
    client.send(Packet::Publish(publish(
        "t",
        QoS::AtLeastOnce,
        b"x",
        Some(5),
    )));
    client.sync();
    client.send(Packet::Publish(publish(
        "t",
        QoS::AtLeastOnce,
        b"x",
        Some(6),
    )));
    assert_eq!(client.expect_disconnect(), 0x94, "Topic Alias invalid");
    assert_broker_still_serves(broker.addr());
}

#[test]
fn issue8_empty_topic_with_an_alias_never_set_is_a_protocol_error() {
    let broker = start_broker();
    let mut client = V5Client::connect_props(
        broker.addr(),
        &unique_id("alias-unset"),
        ConnectProperties::new(),
    );
    client.send(Packet::Publish(publish(
        "t/x",
        QoS::AtMostOnce,
        b"x",
        Some(1),
    )));
    client.send(Packet::Publish(publish("", QoS::AtMostOnce, b"x", Some(1))));
    client.sync();
    client.send(Packet::Publish(publish(
        "",
        QoS::AtLeastOnce,
        b"x",
        Some(2),
    )));
    assert_eq!(client.expect_disconnect(), 0x82, "Protocol Error");
}

#[test]
fn issue8_inbound_aliases_do_not_survive_the_connection() {
    // [MQTT-3.3.2-7] Aliases belong to the network connection: the session resumes, the
    // aliases do not (as Paho's test_client_topic_alias checks).
    let broker = start_broker();
    let id = unique_id("alias-reconnect");
    let topic = unique_topic("alias/reconnect");
    let expiry = connect_properties(None, None, Some(60));
    let mut client = V5Client::connect_props(broker.addr(), &id, expiry.clone());
    client.subscribe(&topic, QoS::AtLeastOnce);
    client.send(Packet::Publish(publish(
        &topic,
        QoS::AtLeastOnce,
        b"1",
        Some(1),
    )));
    client.send(Packet::Publish(publish(
        "",
        QoS::AtLeastOnce,
        b"2",
        Some(1),
    )));
    for payload in [b"1", b"2"] {
        assert_eq!(&client.receive().payload[..], payload);
    }
    client.disconnect();
    let (mut client, frame) =
        V5Client::connect_accepted(broker.addr(), connect(&id, false, Some(expiry)));
    assert_eq!(frame.body[0], 1, "session present");
    client.send(Packet::Publish(publish(
        &topic,
        QoS::AtLeastOnce,
        b"3",
        None,
    )));
    assert_eq!(
        &client.receive().payload[..],
        b"3",
        "the subscription stayed"
    );
    client.send(Packet::Publish(publish(
        "",
        QoS::AtLeastOnce,
        b"4",
        Some(1),
    )));
    assert_eq!(client.expect_disconnect(), 0x82, "alias 1 is unknown here");
}

#[test]
fn issue8_a_retained_message_published_by_alias_is_kept_under_its_topic() {
    // At `retained_max` = 1 the second message is a replacement only under the topic its
    // alias names (checked as a new, empty topic it was refused with 0x97).
    let broker = broker_with(|c| c.limits.retained_max = 1);
    let topic = unique_topic("alias/retained");
    let mut publisher = V5Client::connect_props(
        broker.addr(),
        &unique_id("alias-ret-pub"),
        ConnectProperties::new(),
    );
    let mut first = publish(&topic, QoS::AtLeastOnce, b"old", Some(3));
    first.retain = true;
    publisher.send(Packet::Publish(first));
    let mut second = publish("", QoS::AtLeastOnce, b"new", Some(3));
    second.retain = true;
    publisher.send(Packet::Publish(second));
    publisher.sync();
    let mut v3 = RawClient::connect(broker.addr(), &unique_id("alias-ret-v3"));
    v3.subscribe(1, &[(&topic, 0)]);
    let got = v3.read_publish();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.retain),
        (topic.as_str(), &b"new"[..], true)
    );
}

// ---------------------------------------------------------------------------------------------
// Outbound: aliases the broker assigns
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_paho_server_topic_alias() {
    // Eclipse Paho's interop test_server_topic_alias: a client allowing 1 alias publishes to
    // its own subscription at QoS 0, 1, 2: the first PUBLISH back carries the topic and an
    // alias, the next two an empty topic and the same alias [MQTT-3.3.2-11].
    let broker = start_broker();
    let topic = unique_topic("alias/paho");
    let mut client = V5Client::connect_props(
        broker.addr(),
        &unique_id("alias-paho"),
        connect_properties(Some(1), None, None),
    );
    client.subscribe(&topic, QoS::ExactlyOnce);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        client.send(Packet::Publish(publish(
            &topic,
            qos,
            b"topic alias 1",
            None,
        )));
    }
    let got: Vec<Publish> = (0..3).map(|_| client.receive()).collect();
    let alias = alias_of(&got[0]).expect("the first one sets an alias");
    assert!(alias > 0);
    assert_eq!(topic_of(&got[0]), topic);
    for (n, publish) in got.iter().enumerate().skip(1) {
        assert_eq!(
            (topic_of(publish), alias_of(publish)),
            ("", Some(alias)),
            "{n}"
        );
        assert_eq!(&publish.payload[..], b"topic alias 1");
    }
    assert_eq!(
        got.iter().map(|p| p.qos).collect::<Vec<_>>(),
        [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
    );
    client.sync();

    // Then without Topic Alias Maximum (and with 0): no alias at all.
    for alias_max in [None, Some(0)] {
        let mut client = V5Client::connect_props(
            broker.addr(),
            &unique_id("alias-paho-none"),
            connect_properties(alias_max, None, None),
        );
        client.subscribe(&topic, QoS::ExactlyOnce);
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            client.send(Packet::Publish(publish(&topic, qos, b"plain", None)));
        }
        for _ in 0..3 {
            let publish = client.receive();
            assert_eq!(
                (topic_of(&publish), alias_of(&publish)),
                (topic.as_str(), None)
            );
        }
        client.sync();
    }
}

/// A subscriber allowing 2 aliases, homed away from the publisher, gets many topics, some
/// repeating: every alias within 2, every topic resolvable, a repeat sent by alias alone while
/// its alias holds; live QoS 0 and 1 and queued messages (its window is 1) alike. A 3.1.1 and
/// a no-alias v5 subscriber of the same messages meanwhile get full topics.
fn outbound_aliases_assigned_reused_and_bounded(shards: usize) {
    let broker = broker_with(|c| c.shards = shards);
    let root = unique_topic("alias/out");
    let filter = format!("{root}/#");
    let properties = ConnectProperties {
        receive_maximum: Some(1),
        ..connect_properties(Some(2), None, None)
    };
    let mut aliased = V5Client::connect_props(
        broker.addr(),
        &unique_id_on(shards - 1, shards, "alias-out-sub"),
        properties,
    );
    aliased.subscribe(&filter, QoS::AtLeastOnce);
    let mut plain = V5Client::connect_props(
        broker.addr(),
        &unique_id_on(shards - 1, shards, "alias-out-plain"),
        ConnectProperties::new(),
    );
    plain.subscribe(&filter, QoS::AtMostOnce);
    let mut v3 = RawClient::connect(
        broker.addr(),
        &unique_id_on(shards / 2, shards, "alias-out-v3"),
    );
    v3.subscribe(1, &[(&filter, 0)]);
    let mut publisher = V5Client::connect_props(
        broker.addr(),
        &unique_id_on(0, shards, "alias-out-pub"),
        ConnectProperties::new(),
    );
    let names = ["a", "a", "b", "a", "b", "c", "c", "a", "d", "d", "d", "b"];
    let topics: Vec<String> = names.iter().map(|n| format!("{root}/{n}")).collect();
    // Live, one at a time.
    let mut client_side = ClientAliases::default();
    let mut by_alias_alone = 0;
    let qos_of = |n: usize| {
        if n.is_multiple_of(2) {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    };
    for (n, topic) in topics.iter().enumerate() {
        publisher.send(Packet::Publish(publish(
            topic,
            qos_of(n),
            n.to_string().as_bytes(),
            None,
        )));
        let got = aliased.receive();
        assert_eq!(&got.payload[..], n.to_string().as_bytes());
        assert_eq!(&client_side.topic(&got, 2), topic, "message {n}");
        by_alias_alone += usize::from(topic_of(&got).is_empty());
        if n > 0 && topics[n - 1] == *topic {
            assert_eq!(topic_of(&got), "", "a repeat goes by alias alone ({n})");
        }
        let got = plain.receive();
        assert_eq!((topic_of(&got), alias_of(&got)), (topic.as_str(), None));
        assert_eq!(v3.read_publish().topic, *topic);
    }
    assert!(by_alias_alone >= 5, "{by_alias_alone} sent by alias alone");
    // Queued: the aliased client holds its one QoS 1 ack back, the rest wait in the queue and
    // go out in order as it acks, with aliases that still add up.
    aliased.acks = false;
    for (n, topic) in topics.iter().enumerate() {
        publisher.send(Packet::Publish(publish(
            topic,
            QoS::AtLeastOnce,
            n.to_string().as_bytes(),
            None,
        )));
    }
    for (n, topic) in topics.iter().enumerate() {
        let got = aliased.receive();
        assert_eq!(&got.payload[..], n.to_string().as_bytes(), "in order");
        assert_eq!(&client_side.topic(&got, 2), topic, "queued message {n}");
        aliased.send(Packet::PubAck(PubAck::new(got.pkid, None)));
    }
    publisher.sync();
}

#[test]
fn issue8_outbound_aliases_assigned_reused_and_bounded_on_1_and_4_shards() {
    for shards in SHARD_COUNTS {
        outbound_aliases_assigned_reused_and_bounded(shards);
    }
}

#[test]
fn issue8_outbound_aliases_start_afresh_on_a_new_connection() {
    // A QoS 1 message resent on resume (DUP) goes out on a connection whose aliases are new:
    // it carries its topic again [MQTT-3.3.2-7]; so does a retained message on subscribe.
    let broker = start_broker();
    let id = unique_id("alias-resend");
    let topic = unique_topic("alias/resend");
    let properties = connect_properties(Some(4), None, Some(60));
    let mut client = V5Client::connect_props(broker.addr(), &id, properties.clone());
    client.subscribe(&topic, QoS::AtLeastOnce);
    let mut publisher = V5Client::connect_props(
        broker.addr(),
        &unique_id("alias-resend-pub"),
        ConnectProperties::new(),
    );
    publisher.send(Packet::Publish(publish(
        &topic,
        QoS::AtLeastOnce,
        b"1",
        None,
    )));
    let first = client.receive();
    assert_eq!(
        (topic_of(&first), alias_of(&first)),
        (topic.as_str(), Some(1))
    );
    client.acks = false;
    publisher.send(Packet::Publish(publish(
        &topic,
        QoS::AtLeastOnce,
        b"2",
        None,
    )));
    let second = client.receive();
    assert_eq!(
        (topic_of(&second), alias_of(&second), second.dup),
        ("", Some(1), false)
    );
    drop(client);
    let (mut client, frame) =
        V5Client::connect_accepted(broker.addr(), connect(&id, false, Some(properties)));
    assert_eq!(frame.body[0], 1, "session present");
    let again = client.receive();
    assert_eq!(
        (
            topic_of(&again),
            alias_of(&again),
            again.dup,
            &again.payload[..]
        ),
        (topic.as_str(), Some(1), true, &b"2"[..])
    );

    let mut retained = publish(&topic, QoS::AtLeastOnce, b"kept", None);
    retained.retain = true;
    publisher.send(Packet::Publish(retained));
    let live = client.receive();
    assert_eq!(
        (topic_of(&live), alias_of(&live)),
        ("", Some(1)),
        "live, by alias"
    );
    let mut late = V5Client::connect_props(
        broker.addr(),
        &unique_id("alias-retained"),
        connect_properties(Some(4), None, None),
    );
    late.subscribe(&topic, QoS::AtLeastOnce);
    let got = late.receive();
    assert_eq!(
        (topic_of(&got), alias_of(&got), got.retain),
        (topic.as_str(), Some(1), true),
        "retained on subscribe, with a new alias"
    );
}

// ---------------------------------------------------------------------------------------------
// The client's Maximum Packet Size
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.1.2-24] A subscriber allowing 64-byte packets, homed away from the publisher:
/// what is larger is not sent (counted), a QoS 1 message so dropped does not hold its window
/// (Receive Maximum 1) or its queue, and what fits still comes.
fn max_packet_size_drops(shards: usize) {
    let broker = broker_with(|c| c.shards = shards);
    let topic = unique_topic("size");
    let id = unique_id_on(shards - 1, shards, "size-sub");
    let properties = ConnectProperties {
        receive_maximum: Some(1),
        ..connect_properties(None, Some(64), Some(60))
    };
    let mut sub = V5Client::connect_props(broker.addr(), &id, properties.clone());
    sub.subscribe(&topic, QoS::AtLeastOnce);
    let mut publisher = V5Client::connect_props(
        broker.addr(),
        &unique_id_on(0, shards, "size-pub"),
        ConnectProperties::new(),
    );
    let small = [b's'; 16];
    let large = [b'L'; 64];
    let before: u64 = broker
        .stats()
        .iter()
        .map(|s| s.dropped_packet_too_large)
        .sum();
    let sends = [
        (QoS::AtMostOnce, &large[..]),
        (QoS::AtMostOnce, &small[..]),
        (QoS::AtLeastOnce, &large[..]),
        (QoS::AtLeastOnce, &small[..]),
    ];
    for (qos, payload) in sends {
        publisher.send(Packet::Publish(publish(&topic, qos, payload, None)));
        if payload == small {
            let got = sub.receive();
            assert_eq!((got.qos, &got.payload[..]), (qos, payload));
        }
    }
    sub.expect_no_publish("too large for the subscriber");
    // Queued while away: the large one is dropped when its turn comes, the small one follows.
    sub.disconnect();
    for payload in [&large[..], &small[..], &large[..], &small[..]] {
        publisher.send(Packet::Publish(publish(
            &topic,
            QoS::AtLeastOnce,
            payload,
            None,
        )));
    }
    publisher.sync();
    let (mut sub, _) =
        V5Client::connect_accepted(broker.addr(), connect(&id, false, Some(properties)));
    for _ in 0..2 {
        assert_eq!(&sub.receive().payload[..], &small[..]);
    }
    sub.expect_no_publish("the large ones were dropped");
    broker.wait_counter(
        "dropped_packet_too_large",
        |s| s.dropped_packet_too_large,
        before + 4,
    );
}

#[test]
fn issue8_max_packet_size_drops_what_is_larger_on_1_and_4_shards() {
    for shards in SHARD_COUNTS {
        max_packet_size_drops(shards);
    }
}

#[test]
fn issue8_max_packet_size_counts_the_alias_that_would_be_sent() {
    // Aliases and a size limit together: a PUBLISH too large is not sent and assigns no alias
    // the client never saw; the next one that fits carries the topic.
    let broker = start_broker();
    let topic = unique_topic("size/alias");
    let mut sub = V5Client::connect_props(
        broker.addr(),
        &unique_id("size-alias"),
        connect_properties(Some(3), Some(80), None),
    );
    sub.subscribe(&topic, QoS::AtMostOnce);
    let mut publisher = V5Client::connect_props(
        broker.addr(),
        &unique_id("size-alias-pub"),
        ConnectProperties::new(),
    );
    publisher.send(Packet::Publish(publish(
        &topic,
        QoS::AtMostOnce,
        &[b'L'; 80],
        None,
    )));
    publisher.send(Packet::Publish(publish(
        &topic,
        QoS::AtMostOnce,
        b"fits",
        None,
    )));
    let got = sub.receive();
    assert_eq!(
        (topic_of(&got), alias_of(&got), &got.payload[..]),
        (topic.as_str(), Some(1), &b"fits"[..])
    );
    publisher.send(Packet::Publish(publish(
        &topic,
        QoS::AtMostOnce,
        b"again",
        None,
    )));
    let got = sub.receive();
    assert_eq!((topic_of(&got), alias_of(&got)), ("", Some(1)));
}
