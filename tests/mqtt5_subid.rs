//! MQTT 5.0 Subscription Identifiers and shared-subscription options through the broker
//! (issue 8): a PUBLISH carries the identifier of every matching subscription of its client
//! [MQTT-3.3.4-3] [MQTT-3.3.4-4], a shared subscription's own only, on live, retained, queued
//! and in-flight messages, with publisher and subscriber on one shard or apart on four;
//! Retain As Published on `$share`, and no retained messages for a `$share` subscription.
//!
//! Packets are built and read with rumqttc's v5 codec (`rumqttc::v5::mqttbytes`), or written
//! byte by byte where no client would send them; `mosquitto_sub -V 5` checks the same from
//! outside.

mod common;

use common::v5::{connect, V5Client};
use common::*;
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, Filter, Packet, PubAck, PubAckReason, Publish, PublishProperties, Subscribe,
    SubscribeProperties, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use std::collections::BTreeSet;

/// This file's own helpers on the shared client: subscriptions with an identifier, and
/// publishes with fresh packet ids.
impl V5Client {
    /// SUBSCRIBE `filters` with Subscription Identifier `id`; returns the SUBACK's codes.
    fn subscribe_with(&mut self, filters: Vec<Filter>, id: Option<usize>) -> Vec<u8> {
        let properties = id.map(|id| SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        });
        self.subscribe_codes(filters, properties)
    }

    /// SUBSCRIBE one filter with Subscription Identifier `id`, granted as asked.
    fn subscribe_id(&mut self, filter: &str, qos: QoS, id: Option<usize>) {
        let codes = self.subscribe_with(vec![Filter::new(filter, qos)], id);
        assert_eq!(codes, vec![qos as u8], "granted as asked");
    }

    fn unsubscribe(&mut self, filter: &str) {
        let pkid = self.packet_id();
        self.send(Packet::Unsubscribe(Unsubscribe {
            pkid,
            filters: vec![filter.into()],
            properties: None,
        }));
        let frame = self.read();
        assert_eq!(frame.first_byte, 0xB0, "UNSUBACK expected: {frame:?}");
    }

    /// PUBLISH at QoS 0, or at QoS 1 waiting for its PUBACK.
    fn publish_to(&mut self, topic: &str, qos: QoS, retain: bool, payload: &str) {
        self.publish_with(topic, qos, retain, payload, None);
    }

    fn publish_with(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &str,
        properties: Option<PublishProperties>,
    ) {
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            self.packet_id()
        };
        self.send(Packet::Publish(Publish {
            pkid,
            retain,
            ..Publish::new(topic, qos, payload.to_string(), properties)
        }));
        if qos == QoS::AtLeastOnce {
            let frame = self.read();
            assert_eq!(frame.first_byte, 0x40, "PUBACK expected: {frame:?}");
        }
    }
}

fn broker(shards: usize) -> TestBroker {
    let mut config = test_config();
    config.shards = shards;
    TestBroker::start(config)
}

/// The Subscription Identifiers a PUBLISH carries, in order; none for no property at all.
fn ids(publish: &Publish) -> Vec<usize> {
    publish
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone())
        .unwrap_or_default()
}

fn id_set(publish: &Publish) -> BTreeSet<usize> {
    ids(publish).into_iter().collect()
}

/// The client ids of a test: the publisher on shard 0, subscribers on the last shard (the same
/// one when there is one).
fn on(shard_of: usize, shards: usize, prefix: &str) -> String {
    unique_id_on(shard_of.min(shards - 1), shards, prefix)
}

// ---------------------------------------------------------------------------------------------
// CONNACK, SUBSCRIBE
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_connack_says_subscription_identifiers_are_available() {
    let broker = broker(1);
    let mut client = V5Client::open(broker.addr());
    client.send(Packet::Connect(
        connect(&unique_id("subid-connack"), true, None),
        None,
        None,
    ));
    let frame = client.read();
    let Some(Packet::ConnAck(ack)) = frame.packet else {
        panic!("CONNACK expected: {frame:?}");
    };
    let properties = ack.properties.expect("an MQTT 5 CONNACK has properties");
    assert_ne!(
        properties.subscription_identifiers_available,
        Some(0),
        "absent or 1: available"
    );
}

/// A raw MQTT 5 SUBSCRIBE of `filter` at QoS 0 with `properties` as given.
fn raw_subscribe(packet_id: u16, properties: &[u8], filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    put_remaining_length(properties.len(), &mut body);
    body.extend_from_slice(properties);
    put_string(filter.as_bytes(), &mut body);
    body.push(0);
    packet(0x82, &body)
}

#[test]
fn issue8_subscription_identifier_zero_or_twice_is_a_protocol_error() {
    // Spec 3.8.2.1.2: 0 is a Protocol Error, and so is the property twice: DISCONNECT 0x82.
    let broker = broker(1);
    for properties in [&[0x0B, 0x00][..], &[0x0B, 0x01, 0x0B, 0x02][..]] {
        let mut client = V5Client::connect(broker.addr(), &unique_id("subid-zero"));
        client.send_bytes(&raw_subscribe(1, properties, "t/zero"));
        let frame = client.read();
        assert_eq!(frame.first_byte, 0xE0, "DISCONNECT expected: {frame:?}");
        assert_eq!(frame.body[0], 0x82, "Protocol Error: {frame:?}");
        assert!(client.try_read(WAIT).is_none(), "then closed");
    }
    assert_broker_still_serves(broker.addr());
}

#[test]
fn issue8_largest_subscription_identifier_goes_out_as_it_came() {
    // 268,435,455: four bytes of variable byte integer, sent raw and read back by rumqttc.
    let broker = broker(1);
    let topic = unique_topic("subid/max");
    let mut client = V5Client::connect(broker.addr(), &unique_id("subid-max"));
    client.send_bytes(&raw_subscribe(1, &[0x0B, 0xFF, 0xFF, 0xFF, 0x7F], &topic));
    let frame = client.read();
    assert_eq!(frame.first_byte, 0x90, "SUBACK: {frame:?}");
    assert_eq!(frame.body[frame.body.len() - 1], 0x00, "granted: {frame:?}");
    client.publish_to(&topic, QoS::AtMostOnce, false, "big id");
    assert_eq!(ids(&client.receive()), vec![268_435_455]);
}

// ---------------------------------------------------------------------------------------------
// Live messages, on one shard and across four
// ---------------------------------------------------------------------------------------------

/// One identifier; a subscription without one gets no property [MQTT-3.3.4-3]; a 3.1.1
/// subscriber gets the plain message. Subscribers with and without identifiers interleave on
/// one shard, so the QoS 0 bytes encoded once per route must not leak an identifier.
fn check_one_identifier(shards: usize) {
    let broker = broker(shards);
    let topic = unique_topic("subid/one");
    let addr = broker.addr();
    let mut plain_before = V5Client::connect(addr, &on(1, shards, "subid-plain-a"));
    plain_before.subscribe_id(&topic, QoS::AtLeastOnce, None);
    let mut with_id = V5Client::connect(addr, &on(1, shards, "subid-one"));
    with_id.subscribe_id(&topic, QoS::AtLeastOnce, Some(7));
    let mut plain_after = V5Client::connect(addr, &on(1, shards, "subid-plain-b"));
    plain_after.subscribe_id(&topic, QoS::AtLeastOnce, None);
    let mut v3 = RawClient::connect(addr, &on(1, shards, "subid-v311"));
    v3.send(&subscribe_bytes(1, &[(&topic, 1)]));
    assert_eq!(v3.read_packet().suback(), (1, vec![1]));

    let mut publisher = V5Client::connect(addr, &on(0, shards, "subid-pub"));
    let properties = PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..PublishProperties::default()
    };
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        for route_properties in [None, Some(properties.clone())] {
            let payload = format!("{qos:?} {}", route_properties.is_some());
            publisher.publish_with(&topic, qos, false, &payload, route_properties.clone());
            let got = with_id.receive();
            assert_eq!(got.payload, payload.as_bytes());
            assert_eq!(ids(&got), vec![7], "{payload}");
            if route_properties.is_some() {
                let p = got.properties.as_ref().expect("properties");
                assert_eq!(p.content_type.as_deref(), Some("text/plain"), "kept");
                assert_eq!(p.user_properties, properties.user_properties, "kept");
            }
            for plain in [&mut plain_before, &mut plain_after] {
                let got = plain.receive();
                assert_eq!(got.payload, payload.as_bytes());
                assert_eq!(
                    got.properties.map(|p| p.subscription_identifiers),
                    route_properties.as_ref().map(|_| Vec::new()),
                    "no identifier for a subscription without one: {payload}"
                );
            }
            let got = v3.read_publish();
            assert_eq!(got.payload, payload.as_bytes(), "3.1.1 unaffected");
            assert_eq!(got.topic, topic);
            if let Some(packet_id) = got.packet_id {
                v3.send(&puback_bytes(packet_id));
            }
        }
    }
}

#[test]
fn issue8_one_subscription_identifier_one_shard() {
    check_one_identifier(1);
}

#[test]
fn issue8_one_subscription_identifier_across_shards() {
    check_one_identifier(4);
}

/// Paho's `test_subscribe_identifiers`: client A subscribes `t` with 456789; client B
/// subscribes `t` with 2 and `t/#` with 3 (two SUBSCRIBEs, not waiting) and publishes on `t`:
/// A gets one PUBLISH with 456789, B one with both 2 and 3 [MQTT-3.3.4-4].
fn check_overlapping_subscriptions(shards: usize) {
    let broker = broker(shards);
    let topic = unique_topic("subid/overlap");
    let mut a = V5Client::connect(broker.addr(), &on(1, shards, "subid-a"));
    a.subscribe_id(&topic, QoS::ExactlyOnce, Some(456_789));
    let mut b = V5Client::connect(broker.addr(), &on(0, shards, "subid-b"));
    let subscribe = |pkid, filter: String, id| {
        Packet::Subscribe(Subscribe {
            pkid,
            ..Subscribe::new(
                Filter::new(filter, QoS::ExactlyOnce),
                Some(SubscribeProperties {
                    id: Some(id),
                    user_properties: Vec::new(),
                }),
            )
        })
    };
    b.send(subscribe(10, topic.clone(), 2));
    b.send(subscribe(11, format!("{topic}/#"), 3));
    b.send(Packet::Publish(Publish {
        pkid: 12,
        ..Publish::new(&topic, QoS::AtLeastOnce, "sub identifier test", None)
    }));
    let mut subacks = 0;
    let got = loop {
        let frame = b.read();
        match frame.packet {
            Some(Packet::SubAck(_)) => subacks += 1,
            Some(Packet::PubAck(_)) => {}
            Some(Packet::Publish(publish)) => break publish,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(subacks, 2, "both SUBACKs before the message");
    assert_eq!(got.payload, &b"sub identifier test"[..]);
    assert_eq!(id_set(&got), BTreeSet::from([2, 3]));
    b.send(Packet::PubAck(PubAck::new(got.pkid, None)));
    let got = a.receive();
    assert_eq!(ids(&got), vec![456_789], "only A's own");
    b.expect_no_publish("one PUBLISH for overlapping subscriptions");
    a.expect_no_publish("one PUBLISH");
}

#[test]
fn issue8_overlapping_subscriptions_carry_every_identifier_one_shard() {
    check_overlapping_subscriptions(1);
}

#[test]
fn issue8_overlapping_subscriptions_carry_every_identifier_across_shards() {
    check_overlapping_subscriptions(4);
}

/// A client's own publish on a topic two of its subscriptions match, one saying No Local: that
/// one does not match its message at all [MQTT-3.8.3-3], so the copy it gets is the other
/// subscription's alone: its QoS (0, not the No Local one's 2), its Retain As Published (off:
/// RETAIN 0 [MQTT-3.3.1-12]) and its identifier only. Another client with the same two
/// subscriptions gets both merged. (Found by tests/differential/run.py: the No Local
/// subscription's options and identifier were merged into the publisher's copy.)
fn check_no_local_subscription_lends_nothing_to_an_overlapping_one(shards: usize) {
    let broker = broker(shards);
    let topic = unique_topic("subid/nolocal");
    let subscribe_both = |client: &mut V5Client| {
        let no_local = Filter {
            nolocal: true,
            preserve_retain: true,
            ..Filter::new(format!("{topic}/#"), QoS::ExactlyOnce)
        };
        client.subscribe_with(vec![no_local], Some(1));
        let plain = Filter::new(topic.clone(), QoS::AtMostOnce);
        assert_eq!(client.subscribe_with(vec![plain], Some(2)), vec![0]);
    };
    let mut other = V5Client::connect(broker.addr(), &on(1, shards, "subid-nl-other"));
    subscribe_both(&mut other);
    let mut own = V5Client::connect(broker.addr(), &on(0, shards, "subid-nl-own"));
    subscribe_both(&mut own);
    // Its PUBACK may come after its copy: across shards it waits for the other shard to
    // take the message (nothing orders the two).
    let pkid = own.packet_id();
    own.send(Packet::Publish(Publish {
        pkid,
        retain: true,
        ..Publish::new(&topic, QoS::AtLeastOnce, "own", None)
    }));
    let (mut acked, mut copy) = (false, None);
    while !acked || copy.is_none() {
        match own.read().packet {
            Some(Packet::PubAck(ack)) if ack.pkid == pkid && !acked => acked = true,
            Some(Packet::Publish(publish)) if copy.is_none() => copy = Some(publish),
            other => panic!("unexpected {other:?}"),
        }
    }
    let got = copy.expect("its copy");
    assert_eq!(got.payload, &b"own"[..]);
    assert_eq!(got.qos, QoS::AtMostOnce, "the plain subscription's QoS");
    assert!(!got.retain, "the plain subscription does not keep RETAIN");
    assert_eq!(
        ids(&got),
        vec![2],
        "the No Local subscription's identifier left out"
    );
    own.expect_no_publish("one copy");
    let got = other.receive();
    assert_eq!(
        got.qos,
        QoS::AtLeastOnce,
        "both subscriptions: the higher QoS"
    );
    assert!(got.retain, "Retain As Published of the first subscription");
    assert_eq!(id_set(&got), BTreeSet::from([1, 2]));
    if got.qos == QoS::AtLeastOnce {
        other.send(Packet::PubAck(PubAck::new(got.pkid, None)));
    }
    other.expect_no_publish("one copy");
}

/// A publish whose only subscriber is its publisher's own No Local subscription goes to nobody,
/// yet its PUBACK says Success, not 0x10 No matching subscribers: a subscription was there
/// (mosquitto's 02-subpub-qos1-nolocal expects this).
#[test]
fn a_publish_only_its_own_no_local_subscription_matches_is_acked_success() {
    let broker = broker(1);
    let topic = unique_topic("subid/nolocal-ack");
    let mut own = V5Client::connect(broker.addr(), &unique_id("subid-nl-ack"));
    let no_local = Filter {
        nolocal: true,
        ..Filter::new(topic.clone(), QoS::AtLeastOnce)
    };
    assert_eq!(own.subscribe_with(vec![no_local], None), vec![1]);
    let ack = own
        .publish(Publish {
            pkid: 9,
            ..Publish::new(&topic, QoS::AtLeastOnce, "own", None)
        })
        .puback();
    assert_eq!(ack.reason, PubAckReason::Success);
    own.expect_no_publish("No Local");
}

#[test]
fn no_local_subscription_lends_nothing_to_an_overlapping_one_one_shard() {
    check_no_local_subscription_lends_nothing_to_an_overlapping_one(1);
}

#[test]
fn no_local_subscription_lends_nothing_to_an_overlapping_one_across_shards() {
    check_no_local_subscription_lends_nothing_to_an_overlapping_one(4);
}

/// `payload` from `publisher` on `topic`, as `client` receives it.
fn exchange(
    publisher: &mut V5Client,
    client: &mut V5Client,
    topic: &str,
    payload: &str,
) -> Publish {
    publisher.publish_to(topic, QoS::AtMostOnce, false, payload);
    let got = client.receive();
    assert_eq!(got.payload, payload.as_bytes());
    got
}

#[test]
fn issue8_resubscribe_replaces_or_removes_the_identifier_and_unsubscribe_drops_it() {
    // [MQTT-3.8.4-3] A SUBSCRIBE of a filter already held replaces the subscription, its
    // identifier with it.
    let broker = broker(1);
    let topic = unique_topic("subid/replace");
    let mut client = V5Client::connect(broker.addr(), &unique_id("subid-replace"));
    let mut publisher = V5Client::connect(broker.addr(), &unique_id("subid-replace-pub"));
    client.subscribe_id(&topic, QoS::AtMostOnce, Some(5));
    assert_eq!(
        ids(&exchange(&mut publisher, &mut client, &topic, "first")),
        vec![5]
    );
    client.subscribe_id(&topic, QoS::AtMostOnce, Some(6));
    assert_eq!(
        ids(&exchange(&mut publisher, &mut client, &topic, "replaced")),
        vec![6]
    );
    client.subscribe_id(&topic, QoS::AtMostOnce, None);
    let got = exchange(&mut publisher, &mut client, &topic, "removed");
    assert_eq!(got.properties, None, "no identifier, no property at all");
    client.subscribe_id(&topic, QoS::AtMostOnce, Some(8));
    assert_eq!(
        ids(&exchange(&mut publisher, &mut client, &topic, "again")),
        vec![8]
    );

    // Gone with the subscription: a new one without an identifier gets none.
    client.unsubscribe(&topic);
    publisher.publish_to(&topic, QoS::AtMostOnce, false, "unsubscribed");
    client.expect_no_publish("unsubscribed");
    client.subscribe_id(&topic, QoS::AtMostOnce, None);
    assert_eq!(
        exchange(&mut publisher, &mut client, &topic, "fresh").properties,
        None
    );

    // One SUBSCRIBE with two filters gives the identifier to both; the overlap carries it
    // twice, once per subscription (spec 3.8.2.1.2).
    let codes = client.subscribe_with(
        vec![
            Filter::new(&topic, QoS::AtMostOnce),
            Filter::new(format!("{topic}/#"), QoS::AtMostOnce),
        ],
        Some(9),
    );
    assert_eq!(codes, vec![0, 0]);
    assert_eq!(
        ids(&exchange(&mut publisher, &mut client, &topic, "twice")),
        vec![9, 9]
    );
}

// ---------------------------------------------------------------------------------------------
// Retained, queued and in-flight messages
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_retained_message_on_subscribe_carries_that_subscriptions_identifier() {
    let broker = broker(1);
    let topic = unique_topic("subid/retained");
    let mut publisher = V5Client::connect(broker.addr(), &unique_id("subid-ret-pub"));
    let properties = PublishProperties {
        content_type: Some("kept".into()),
        ..PublishProperties::default()
    };
    publisher.publish_with(&topic, QoS::AtLeastOnce, true, "retained", Some(properties));

    let mut client = V5Client::connect(broker.addr(), &unique_id("subid-ret"));
    client.subscribe_id(&format!("{topic}/#"), QoS::AtLeastOnce, Some(31));
    let got = client.receive();
    assert!(got.retain);
    assert_eq!(ids(&got), vec![31]);
    assert_eq!(
        got.properties.and_then(|p| p.content_type).as_deref(),
        Some("kept")
    );
    // A second subscription, with another identifier, gets it with its own.
    client.subscribe_id(&topic, QoS::AtLeastOnce, Some(32));
    let got = client.receive();
    assert!(got.retain);
    assert_eq!(ids(&got), vec![32], "only the new subscription's");
    // Without an identifier: none.
    let mut plain = V5Client::connect(broker.addr(), &unique_id("subid-ret-plain"));
    plain.subscribe_id(&topic, QoS::AtLeastOnce, None);
    let got = plain.receive();
    assert!(got.retain);
    assert_eq!(ids(&got), Vec::<usize>::new());
}

/// A persistent session's messages queued while it is away keep the identifiers they were
/// routed with, and so do messages waiting for a full Receive Maximum window.
fn check_queued_messages_keep_identifiers(shards: usize) {
    let broker = broker(shards);
    let topic = unique_topic("subid/queued");
    let id = on(1, shards, "subid-queued");
    let expiry = || {
        Some(ConnectProperties {
            session_expiry_interval: Some(60),
            receive_maximum: Some(1),
            ..ConnectProperties::new()
        })
    };
    let mut client = V5Client::connect_accepted(broker.addr(), connect(&id, true, expiry())).0;
    client.subscribe_id(&topic, QoS::AtLeastOnce, Some(41));
    client.subscribe_id(&format!("{topic}/#"), QoS::AtLeastOnce, Some(42));
    client.disconnect();

    let mut publisher = V5Client::connect(broker.addr(), &on(0, shards, "subid-queued-pub"));
    for n in 0..3 {
        publisher.publish_to(&topic, QoS::AtLeastOnce, false, &format!("queued {n}"));
    }
    // Receive Maximum 1: one in flight, the rest wait in the queue for each PUBACK.
    let mut client = V5Client::connect_accepted(broker.addr(), connect(&id, false, expiry())).0;
    for n in 0..3 {
        let got = client.read_publish();
        assert_eq!(got.payload, format!("queued {n}").as_bytes());
        assert_eq!(id_set(&got), BTreeSet::from([41, 42]), "queued {n}");
        client.expect_no_publish("Receive Maximum 1");
        client.send(Packet::PubAck(PubAck::new(got.pkid, None)));
    }

    // Unacknowledged when the client goes: resent with DUP, with its identifiers (the old
    // connection may not be gone yet: a take-over resumes the session as well).
    publisher.publish_to(&topic, QoS::AtLeastOnce, false, "in flight");
    let got = client.read_publish();
    assert_eq!(id_set(&got), BTreeSet::from([41, 42]));
    drop(client);
    let mut client = V5Client::connect_accepted(broker.addr(), connect(&id, false, expiry())).0;
    let got = client.read_publish();
    assert_eq!(got.payload, &b"in flight"[..]);
    assert!(got.dup, "[MQTT-4.4.0-1] resent with DUP");
    assert_eq!(id_set(&got), BTreeSet::from([41, 42]));
}

#[test]
fn issue8_queued_messages_keep_their_identifiers_one_shard() {
    check_queued_messages_keep_identifiers(1);
}

#[test]
fn issue8_queued_messages_keep_their_identifiers_across_shards() {
    check_queued_messages_keep_identifiers(4);
}

// ---------------------------------------------------------------------------------------------
// Shared subscriptions
// ---------------------------------------------------------------------------------------------

/// A `$share` subscription's message carries its identifier only; the same client's plain
/// subscription gets its own copy with its own [MQTT-3.3.4-5]; Retain As Published holds on
/// `$share` [MQTT-3.3.1-12].
fn check_shared_subscriptions(shards: usize) {
    let broker = broker(shards);
    let topic = unique_topic("subid/shared");
    let share = format!("$share/g/{topic}");
    let mut member = V5Client::connect(broker.addr(), &on(1, shards, "subid-member"));
    let codes = member.subscribe_with(
        vec![Filter {
            preserve_retain: true,
            ..Filter::new(&share, QoS::AtLeastOnce)
        }],
        Some(21),
    );
    assert_eq!(codes, vec![1]);
    member.subscribe_id(&topic, QoS::AtLeastOnce, Some(22));
    let mut plain_group = V5Client::connect(broker.addr(), &on(1, shards, "subid-plain-member"));
    plain_group.subscribe_id(&format!("$share/h/{topic}"), QoS::AtLeastOnce, None);

    let mut publisher = V5Client::connect(broker.addr(), &on(0, shards, "subid-shared-pub"));
    publisher.publish_to(&topic, QoS::AtLeastOnce, true, "retained live");
    let first = member.receive();
    let second = member.receive();
    let mut seen: Vec<(Vec<usize>, bool)> =
        [first, second].iter().map(|p| (ids(p), p.retain)).collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![(vec![21], true), (vec![22], false)],
        "the share's copy: its identifier, RETAIN kept; the plain one: its own, RETAIN cleared"
    );
    let got = plain_group.receive();
    assert_eq!(got.properties, None, "group h's member has no identifier");
    assert!(!got.retain, "no Retain As Published: RETAIN cleared");
    member.expect_no_publish("two copies only");

    // [MQTT-3.8.4-?] spec 4.8.2: no retained messages for a shared subscription.
    let mut late = V5Client::connect(broker.addr(), &on(1, shards, "subid-late"));
    late.subscribe_id(&format!("$share/late/{topic}"), QoS::AtLeastOnce, Some(23));
    late.expect_no_publish("a $share subscription gets no retained message");
    late.subscribe_id(&topic, QoS::AtLeastOnce, Some(24));
    let got = late.receive();
    assert!(
        got.retain && ids(&got) == vec![24],
        "a plain one does: {got:?}"
    );
}

#[test]
fn issue8_shared_subscription_identifier_and_retain_as_published_one_shard() {
    check_shared_subscriptions(1);
}

#[test]
fn issue8_shared_subscription_identifier_and_retain_as_published_across_shards() {
    check_shared_subscriptions(4);
}

// ---------------------------------------------------------------------------------------------
// From outside: mosquitto_sub
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_mosquitto_sub_prints_the_subscription_identifier() {
    for shards in [1, 4] {
        let broker = broker(shards);
        let topic = unique_topic("subid/mosquitto");
        let sub = mosquitto_sub(
            broker.port(),
            &topic,
            1,
            1,
            &[
                "-V",
                "5",
                "-D",
                "subscribe",
                "subscription-identifier",
                "42",
                "-F",
                &format!("{MESSAGE_MARK}%t|%q|%S|%p"),
            ],
        );
        let published = mosquitto_pub(
            broker.port(),
            &["-V", "5", "-t", &topic, "-q", "1", "-m", "hello id"],
        );
        assert!(published.status.success(), "{published:?}");
        let finished = sub.finish();
        let lines: Vec<&str> = finished
            .stdout
            .iter()
            .filter_map(|line| line.strip_prefix(MESSAGE_MARK))
            .collect();
        assert_eq!(
            lines,
            vec![format!("{topic}|1|42|hello id")],
            "{shards} shards: {finished:?}"
        );
    }
}
