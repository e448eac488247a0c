//! MQTT 5.0 through the broker (issue 8): CONNECT/CONNACK with properties, session expiry,
//! server DISCONNECT reasons, the will on DISCONNECT 0x04, publish properties end to end and
//! 3.1.1 <-> 5.0 interop.
//!
//! Packets are built and read with rumqttc's own v5 codec (`rumqttc::v5::mqttbytes`, through
//! the client in tests/common/v5.rs), an implementation independent of ringmq's, or written
//! byte by byte where no client would send them; the mosquitto clients (`-V 5`) check the same
//! from outside.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::v5::{connect, V5Client};
use common::*;
use ringmq::mesh::home_shard;
use rumqttc::v5::mqttbytes::v5::{
    Connect, ConnectProperties, Disconnect, DisconnectProperties, DisconnectReasonCode, Filter,
    LastWill, Packet, Publish, PublishProperties, RetainForwardRule, Subscribe,
    SubscribeProperties, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;

fn with_expiry(secs: u32) -> Option<ConnectProperties> {
    Some(ConnectProperties {
        session_expiry_interval: Some(secs),
        ..ConnectProperties::new()
    })
}

// ---------------------------------------------------------------------------------------------
// CONNECT / CONNACK
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_v5_connect_is_accepted_and_connack_advertises_the_broker() {
    let broker = broker_with(|c| {
        c.limits.incoming_inflight_max = 33;
        c.limits.packet_size_max = 70_000;
    });
    let id = unique_id("v5-connack");
    let (_client, frame) = V5Client::connect_with(broker.addr(), connect(&id, true, None), None);
    assert_eq!(frame.reason_code(), 0x00, "{frame:?}");
    let ack = frame.connack();
    assert!(!ack.session_present);
    let p = ack.properties.expect("an MQTT 5 CONNACK has properties");
    assert_eq!(
        p.receive_max,
        Some(33),
        "Receive Maximum = incoming_inflight_max"
    );
    assert_eq!(
        p.max_qos, None,
        "QoS 2 is supported: no Maximum QoS [MQTT-3.2.2-9]"
    );
    assert_eq!(p.max_packet_size, Some(70_000));
    assert_eq!(p.topic_alias_max, Some(10), "limits.topic_alias_max");
    // Absent: available (3.2.2.3.5, 3.2.2.3.11, 3.2.2.3.12, 3.2.2.3.13).
    assert_eq!(p.retain_available, None);
    assert_eq!(p.wildcard_subscription_available, None);
    assert_eq!(p.subscription_identifiers_available, None);
    assert_eq!(p.shared_subscription_available, None);
    assert_eq!(
        p.assigned_client_identifier, None,
        "the client named itself"
    );
    assert_eq!(p.server_keep_alive, None, "the client's keep alive stands");
    assert_eq!(p.session_expiry_interval, None, "nothing capped");
}

#[test]
fn issue8_v5_empty_client_id_is_assigned_even_without_clean_start() {
    // [MQTT-3.1.3-6] [MQTT-3.1.3-7] The server assigns an id and returns it in CONNACK.
    let broker = broker_with(|c| {
        c.limits.qos_max = 1;
        c.limits.keepalive_max_secs = 30;
    });
    let (_client, frame) =
        V5Client::connect_with(broker.addr(), connect("", false, with_expiry(60)), None);
    assert_eq!(frame.reason_code(), 0x00, "{frame:?}");
    let p = frame.connack().properties.expect("properties");
    let assigned = p
        .assigned_client_identifier
        .expect("Assigned Client Identifier");
    assert!(!assigned.is_empty());
    assert_eq!(p.max_qos, Some(1), "qos_max 1 is advertised");
    assert_eq!(
        p.server_keep_alive,
        Some(30),
        "keep alive 60 capped by keepalive_max_secs [MQTT-3.2.2-21]"
    );
    // The assigned id names a real session: resuming it finds it present.
    drop(_client);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_again, frame) = V5Client::connect_with(
            broker.addr(),
            connect(&assigned, false, with_expiry(60)),
            None,
        );
        if frame.connack().session_present {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the assigned session never resumed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn issue8_v5_refusals_carry_v5_reason_codes() {
    let broker = broker_with(|c| c.allow_anonymous = false);
    let (mut client, frame) = V5Client::connect_with(
        broker.addr(),
        connect(&unique_id("v5-anon"), true, None),
        None,
    );
    assert_eq!(frame.reason_code(), 0x87, "Not authorized: {frame:?}");
    assert!(client.closed());

    let broker = start_broker();
    let properties = ConnectProperties {
        authentication_method: Some("SCRAM-SHA-256".into()),
        ..ConnectProperties::new()
    };
    let (mut client, frame) = V5Client::connect_with(
        broker.addr(),
        connect(&unique_id("v5-auth"), true, Some(properties)),
        None,
    );
    assert_eq!(
        frame.reason_code(),
        0x8C,
        "Bad authentication method: {frame:?}"
    );
    assert!(client.closed());
}

// ---------------------------------------------------------------------------------------------
// Session expiry
// ---------------------------------------------------------------------------------------------

/// Connects `id` with clean start 0 and `expiry`, returning session present.
fn resume(addr: SocketAddr, id: &str, expiry: Option<ConnectProperties>) -> (V5Client, bool) {
    let (client, frame) = V5Client::connect_with(addr, connect(id, false, expiry), None);
    assert_eq!(frame.reason_code(), 0x00, "{frame:?}");
    (client, frame.connack().session_present)
}

/// Closes the connection with a DISCONNECT and waits until the broker has let it go.
fn leave(mut client: V5Client, properties: Option<DisconnectProperties>) {
    client.send(Packet::Disconnect(Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties,
    }));
    assert!(client.closed(), "the broker closes after DISCONNECT");
}

#[test]
fn issue8_session_expiry_zero_ends_the_session_at_disconnect() {
    // [MQTT-3.1.2-23] Session Expiry Interval absent (0): the session ends with the connection.
    let broker = start_broker();
    let id = unique_id("v5-expiry0");
    let (client, present) = resume(broker.addr(), &id, None);
    assert!(!present);
    leave(client, None);
    let (_client, present) = resume(broker.addr(), &id, None);
    assert!(!present, "no session was kept");
}

#[test]
fn issue8_session_expiry_keeps_the_session_and_its_messages_then_expires() {
    let broker = start_broker();
    let id = unique_id("v5-expiry");
    let topic = unique_topic("v5/expiry");
    let (mut client, present) = resume(broker.addr(), &id, with_expiry(60));
    assert!(!present);
    client.subscribe(&topic, QoS::AtLeastOnce);
    leave(client, None);

    // Queued while away, delivered on resume.
    let mut publisher = V5Client::connect(broker.addr(), &unique_id("v5-pub"));
    publisher.send(Packet::Publish(Publish {
        pkid: 1,
        ..Publish::new(&topic, QoS::AtLeastOnce, "kept", None)
    }));
    assert_eq!(publisher.read().first_byte, 0x40, "PUBACK");
    let (mut client, present) = resume(broker.addr(), &id, with_expiry(1));
    assert!(present, "[MQTT-3.2.2-2] the session was kept");
    assert_eq!(&client.read_publish().payload[..], b"kept");
    leave(client, None);

    // This time 1 s: gone after the shard timer has seen it due.
    std::thread::sleep(Duration::from_millis(3_000));
    let (_client, present) = resume(broker.addr(), &id, with_expiry(60));
    assert!(!present, "the session expired after 1 s");
}

#[test]
fn issue8_disconnect_may_shorten_the_session_expiry_but_not_raise_it_from_zero() {
    let broker = start_broker();
    let id = unique_id("v5-disc-expiry");
    // 60 s at CONNECT, 0 at DISCONNECT: the session ends now.
    let (client, _) = resume(broker.addr(), &id, with_expiry(60));
    leave(
        client,
        Some(DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        }),
    );
    let (client, present) = resume(broker.addr(), &id, None);
    assert!(!present, "DISCONNECT set the expiry to 0");

    // [MQTT-3.14.2-2] 0 at CONNECT, non-zero at DISCONNECT: protocol error, told by DISCONNECT.
    let mut client = client;
    client.send(Packet::Disconnect(Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties: Some(DisconnectProperties {
            session_expiry_interval: Some(60),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        }),
    }));
    let frame = client.read();
    assert_eq!(frame.first_byte, 0xE0, "server DISCONNECT: {frame:?}");
    assert_eq!(frame.reason_code(), 0x82, "Protocol Error");
    assert!(client.closed());
}

// ---------------------------------------------------------------------------------------------
// Server DISCONNECT and the will
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_take_over_tells_the_old_connection_0x8e() {
    let broker = start_broker();
    let id = unique_id("v5-takeover");
    let mut old = V5Client::connect(broker.addr(), &id);
    let _new = V5Client::connect(broker.addr(), &id);
    let frame = old.read();
    assert_eq!(frame.first_byte, 0xE0, "server DISCONNECT: {frame:?}");
    assert_eq!(frame.reason_code(), 0x8E, "Session taken over");
    assert!(old.closed());
}

/// A persistent client with a will, taken over by a second connection with its id, clean or
/// not; returns whether the watcher saw the will.
fn will_after_take_over(broker: &TestBroker, second_clean_start: bool) -> bool {
    let topic = unique_topic("v5/takeover-will");
    let mut watcher = V5Client::connect(broker.addr(), &unique_id("v5-takeover-watch"));
    watcher.subscribe(&topic, QoS::AtMostOnce);
    let id = unique_id("v5-takeover-will");
    let will = LastWill::new(&topic, "gone", QoS::AtMostOnce, false, None);
    let (mut old, frame) = V5Client::connect_with(
        broker.addr(),
        connect(&id, true, with_expiry(60)),
        Some(will),
    );
    assert_eq!(frame.reason_code(), 0);
    let (_new, frame) = V5Client::connect_with(
        broker.addr(),
        connect(&id, second_clean_start, with_expiry(60)),
        None,
    );
    assert_eq!(frame.reason_code(), 0);
    assert_eq!(frame.connack().session_present, !second_clean_start);
    assert_eq!(old.read().reason_code(), 0x8E, "Session taken over");
    match watcher.try_read(Duration::from_millis(500)) {
        Some(frame) => {
            assert_eq!(frame.publish().payload, "gone", "{frame:?}");
            true
        }
        None => false,
    }
}

#[test]
fn take_over_of_a_session_that_goes_on_sends_no_will_one_that_ends_does() {
    // [MQTT-3.1.4-3] The old connection's will is published as 3.1.2.5 says: after the close,
    // once its delay passes or its session ends, unless a new connection to the session came
    // before [MQTT-3.1.3-9]. The taking connection came first: the will goes only when it
    // starts clean, ending the session (mosquitto's 07-will-takeover agrees).
    let broker = start_broker();
    assert!(
        !will_after_take_over(&broker, false),
        "the session goes on: no will"
    );
    assert!(
        will_after_take_over(&broker, true),
        "clean start ends the session: the will"
    );
}

#[test]
fn connack_keeps_within_a_small_client_maximum_packet_size() {
    // [MQTT-3.1.2-24] Nothing over the client's Maximum Packet Size, the CONNACK included; a
    // client left without one would wait for ever. 20 bytes fit what the CONNACK must say.
    let broker = start_broker();
    for (size_max, request_response_information) in [(20, None), (20, Some(1)), (16, Some(1))] {
        let properties = ConnectProperties {
            max_packet_size: Some(size_max),
            request_response_info: request_response_information,
            ..ConnectProperties::new()
        };
        let (mut client, frame) = V5Client::connect_with(
            broker.addr(),
            connect(&unique_id("v5-small-max"), true, Some(properties)),
            None,
        );
        assert_eq!(frame.reason_code(), 0, "{frame:?}");
        // Under 128 bytes of body: a one-byte remaining length.
        assert!(frame.body.len() < 128, "{frame:?}");
        let size = 2 + frame.body.len();
        assert!(
            size <= size_max as usize,
            "CONNACK of {size} bytes > {size_max}"
        );
        let p = frame.connack().properties.expect("properties");
        assert_eq!(
            p.receive_max,
            Some(1024),
            "the limits the client must keep stay"
        );
        assert_eq!(p.max_packet_size, Some(1_048_576));
        assert_eq!(p.response_information, None, "dropped to fit");
        client.subscribe("small/max", QoS::AtMostOnce);
    }
    // 2 bytes: not even a CONNACK fits; the client cannot be told, only closed.
    let properties = ConnectProperties {
        max_packet_size: Some(2),
        ..ConnectProperties::new()
    };
    let mut client = V5Client::open(broker.addr());
    client.send(Packet::Connect(
        connect(&unique_id("v5-tiny-max"), true, Some(properties)),
        None,
        None,
    ));
    match client.read_within(Duration::from_secs(5)) {
        common::v5::Received::End | common::v5::Received::Reset(_) => {}
        other => panic!("expected the close without a CONNACK, got {other:?}"),
    }
    assert_broker_still_serves(broker.addr());
}

#[test]
fn issue8_malformed_packet_gets_disconnect_0x81() {
    let broker = start_broker();
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-malformed"));
    // PUBLISH with QoS 3 [MQTT-3.3.1-4]: malformed.
    client.send_bytes(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
    let frame = client.read();
    assert_eq!(frame.first_byte, 0xE0, "server DISCONNECT: {frame:?}");
    assert_eq!(frame.reason_code(), 0x81, "Malformed Packet");
    assert!(client.closed());
}

#[test]
fn issue8_packet_too_large_gets_disconnect_0x95() {
    let broker = broker_with(|c| c.limits.packet_size_max = 1024);
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-large"));
    client.send(Packet::Publish(Publish::new(
        "big",
        QoS::AtMostOnce,
        vec![0u8; 4096],
        None,
    )));
    let frame = client.read();
    assert_eq!(frame.first_byte, 0xE0, "server DISCONNECT: {frame:?}");
    assert_eq!(frame.reason_code(), 0x95, "Packet too large");
    assert!(client.closed());
}

#[test]
fn issue8_keepalive_timeout_gets_disconnect_0x8d() {
    let broker = start_broker();
    let (mut client, frame) = V5Client::connect_with(
        broker.addr(),
        Connect {
            keep_alive: 1,
            ..connect(&unique_id("v5-keepalive"), true, None)
        },
        None,
    );
    assert_eq!(frame.reason_code(), 0);
    // Silent for 1.5 keep alive periods [MQTT-3.1.2-22]; the timer ticks each second.
    let frame = client
        .try_read(Duration::from_secs(5))
        .expect("a DISCONNECT before the close");
    assert_eq!(frame.first_byte, 0xE0, "server DISCONNECT: {frame:?}");
    assert_eq!(frame.reason_code(), 0x8D, "Keep Alive timeout");
    assert!(client.closed());
}

#[test]
fn issue8_disconnect_with_will_message_publishes_the_will() {
    let broker = start_broker();
    let topic = unique_topic("v5/will");
    let mut watcher = V5Client::connect(broker.addr(), &unique_id("v5-will-watch"));
    watcher.subscribe(&topic, QoS::AtMostOnce);
    let will = LastWill::new(&topic, "gone", QoS::AtMostOnce, false, None);
    let (mut client, frame) = V5Client::connect_with(
        broker.addr(),
        connect(&unique_id("v5-will"), true, None),
        Some(will.clone()),
    );
    assert_eq!(frame.reason_code(), 0);
    client.send(Packet::Disconnect(Disconnect::new(
        DisconnectReasonCode::DisconnectWithWillMessage,
    )));
    assert_eq!(&watcher.read_publish().payload[..], b"gone");

    // A normal DISCONNECT still discards it [MQTT-3.14.4-3].
    let (mut client, _) = V5Client::connect_with(
        broker.addr(),
        connect(&unique_id("v5-will"), true, None),
        Some(will),
    );
    client.send(Packet::Disconnect(Disconnect::new(
        DisconnectReasonCode::NormalDisconnection,
    )));
    assert!(client.closed());
    assert!(
        watcher.try_read(QUIET).is_none(),
        "no will after a normal DISCONNECT"
    );
}

// ---------------------------------------------------------------------------------------------
// PUBLISH between 5.0 and 3.1.1 clients
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_v5_and_v311_clients_exchange_messages_both_ways() {
    let broker = start_broker();
    let topic = unique_topic("v5/interop");
    let mut v5 = V5Client::connect(broker.addr(), &unique_id("v5-interop"));
    v5.subscribe(&topic, QoS::AtLeastOnce);
    let mut v3 = RawClient::connect(broker.addr(), &unique_id("v311-interop"));
    v3.send(&subscribe_bytes(1, &[(&topic, 1)]));
    let _suback = v3.read_packet();

    v3.send(&publish_bytes(
        topic.as_bytes(),
        1,
        false,
        false,
        7,
        b"from 3.1.1",
    ));
    let publish = v5.read_publish();
    assert_eq!(&publish.payload[..], b"from 3.1.1");
    // Its own PUBACK and its own message, in either order.
    let (a, b) = (v3.read_packet(), v3.read_packet());
    let (ack, own) = if a.kind() == 4 { (a, b) } else { (b, a) };
    assert_eq!(ack.first_byte, 0x40, "PUBACK to the 3.1.1 publisher");
    assert_eq!(own.publish().payload, b"from 3.1.1");

    v5.send(Packet::Publish(Publish {
        pkid: 9,
        ..Publish::new(&topic, QoS::AtLeastOnce, "from 5.0", None)
    }));
    let publish = v3.read_publish();
    assert_eq!(publish.payload, b"from 5.0");
    assert_eq!(publish.qos, 1);
}

#[test]
fn issue8_mosquitto_clients_speak_v5_through_the_broker() {
    let broker = start_broker();
    let topic = unique_topic("v5/mosquitto");
    let sub = mosquitto_sub(broker.port(), &topic, 1, 1, &["-V", "5"]);
    let published = mosquitto_pub(
        broker.port(),
        &["-V", "5", "-t", &topic, "-q", "1", "-m", "hello v5"],
    );
    assert!(
        published.status.success(),
        "mosquitto_pub -V 5: {published:?}"
    );
    let finished = sub.finish();
    assert_eq!(
        sub_messages(&finished),
        vec![(topic.clone(), 1, false, "hello v5".to_string())],
        "{finished:?}"
    );
}

fn rich_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![
            ("k1".into(), "v1".into()),
            ("k2".into(), "v2".into()),
            ("k1".into(), "again".into()),
        ],
        ..PublishProperties::default()
    }
}

/// A client id homed on `shard` of `shards`.
fn id_on_shard(prefix: &str, shard: usize, shards: usize) -> String {
    loop {
        let id = unique_id(prefix);
        if home_shard(id.as_bytes(), shards) == shard {
            return id;
        }
    }
}

/// Properties of a v5 PUBLISH reach v5 subscribers unchanged, user properties in order
/// [MQTT-3.3.2-17] [MQTT-3.3.2-18], at QoS 0 and 1, on the publisher's shard and another;
/// a 3.1.1 subscriber gets the message without them.
fn check_properties_pass_through(shards: usize) {
    let broker = broker_with(|c| c.shards = shards);
    let topic = unique_topic("v5/props");
    let mut subscribers = Vec::new();
    for shard in [0, shards - 1] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let mut client =
                V5Client::connect(broker.addr(), &id_on_shard("v5-sub", shard, shards));
            client.subscribe(&topic, qos);
            subscribers.push(client);
        }
    }
    let mut v3 = RawClient::connect(broker.addr(), &id_on_shard("v311-sub", shards - 1, shards));
    v3.send(&subscribe_bytes(1, &[(&topic, 1)]));
    let _suback = v3.read_packet();
    // Interest reaches the other shards through the mesh: publish until the last one hears.
    let mut publisher = V5Client::connect(broker.addr(), &id_on_shard("v5-pub", 0, shards));
    std::thread::sleep(Duration::from_millis(if shards > 1 { 300 } else { 0 }));
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        publisher.send(Packet::Publish(Publish {
            pkid: if qos == QoS::AtLeastOnce { 5 } else { 0 },
            ..Publish::new(&topic, qos, "with properties", Some(rich_properties()))
        }));
        for subscriber in &mut subscribers {
            let publish = subscriber.read_publish();
            assert_eq!(&publish.payload[..], b"with properties");
            assert_eq!(
                publish.properties,
                Some(rich_properties()),
                "every property, user properties in order"
            );
        }
        let publish = v3.read_publish();
        assert_eq!(publish.payload, b"with properties", "3.1.1 gets it plain");
    }
    // And a PUBLISH without properties arrives without any.
    publisher.send(Packet::Publish(Publish::new(
        &topic,
        QoS::AtMostOnce,
        "plain",
        None,
    )));
    for subscriber in &mut subscribers {
        let publish = subscriber.read_publish();
        assert_eq!(&publish.payload[..], b"plain");
        assert_eq!(publish.properties, None);
    }
}

#[test]
fn issue8_publish_properties_pass_through_one_shard() {
    check_properties_pass_through(1);
}

#[test]
fn issue8_publish_properties_pass_through_across_shards() {
    check_properties_pass_through(4);
}

#[test]
fn issue8_will_properties_are_passed_on() {
    let broker = start_broker();
    let topic = unique_topic("v5/will-props");
    let mut watcher = V5Client::connect(broker.addr(), &unique_id("v5-will-watch"));
    watcher.subscribe(&topic, QoS::AtMostOnce);
    let will = LastWill::new(
        &topic,
        "gone",
        QoS::AtMostOnce,
        false,
        Some(rumqttc::v5::mqttbytes::v5::LastWillProperties {
            delay_interval: None,
            payload_format_indicator: Some(1),
            message_expiry_interval: None,
            content_type: Some("text/plain".into()),
            response_topic: None,
            correlation_data: None,
            user_properties: vec![("why".into(), "test".into())],
        }),
    );
    let (mut client, _) = V5Client::connect_with(
        broker.addr(),
        connect(&unique_id("v5-will-props"), true, None),
        Some(will),
    );
    client.send(Packet::Disconnect(Disconnect::new(
        DisconnectReasonCode::DisconnectWithWillMessage,
    )));
    let publish = watcher.read_publish();
    let p = publish.properties.expect("will properties");
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(
        p.user_properties,
        vec![("why".to_string(), "test".to_string())]
    );
}

#[test]
fn issue8_mosquitto_v5_user_properties_reach_a_v5_subscriber() {
    let broker = start_broker();
    let topic = unique_topic("v5/mosq-props");
    let sub = mosquitto_sub(
        broker.port(),
        &topic,
        0,
        1,
        &["-V", "5", "-F", "MSG|%t|%q|%r|%p|%P"],
    );
    let published = mosquitto_pub(
        broker.port(),
        &[
            "-V",
            "5",
            "-t",
            &topic,
            "-m",
            "hi",
            "-D",
            "publish",
            "user-property",
            "color",
            "blue",
            "-D",
            "publish",
            "content-type",
            "text/x",
        ],
    );
    assert!(published.status.success(), "{published:?}");
    let finished = sub.finish();
    let line = finished
        .stdout
        .iter()
        .find(|l| l.starts_with(MESSAGE_MARK))
        .unwrap_or_else(|| panic!("no message: {finished:?}"));
    assert!(line.contains("color:blue"), "user property printed: {line}");
}

#[test]
fn issue8_client_topic_alias_is_refused_with_0x94() {
    // CONNACK advertised no Topic Alias Maximum (0) [MQTT-3.2.2-17]: an alias is invalid.
    let broker = broker_with(|c| c.limits.topic_alias_max = 0);
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-alias"));
    client.send(Packet::Publish(Publish::new(
        "t",
        QoS::AtMostOnce,
        "x",
        Some(PublishProperties {
            topic_alias: Some(1),
            ..PublishProperties::default()
        }),
    )));
    let frame = client.read();
    assert_eq!(frame.first_byte, 0xE0, "server DISCONNECT: {frame:?}");
    assert_eq!(frame.reason_code(), 0x94, "Topic Alias invalid");
    assert!(client.closed());
}

// ---------------------------------------------------------------------------------------------
// Acks and subscription options
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_puback_and_pubrec_say_no_matching_subscribers() {
    // 0x10: the message was accepted but nobody subscribed (spec 3.4.2.1).
    let broker = start_broker();
    let topic = unique_topic("v5/nobody");
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-nobody"));
    client.send(Packet::Publish(Publish {
        pkid: 1,
        ..Publish::new(&topic, QoS::AtLeastOnce, "x", None)
    }));
    let frame = client.read();
    assert_eq!(frame.first_byte, 0x40, "PUBACK: {frame:?}");
    assert_eq!(frame.body[2], 0x10, "No matching subscribers: {frame:?}");
    client.send(Packet::Publish(Publish {
        pkid: 2,
        ..Publish::new(&topic, QoS::ExactlyOnce, "x", None)
    }));
    let frame = client.read();
    assert_eq!(frame.first_byte, 0x50, "PUBREC: {frame:?}");
    assert_eq!(frame.body[2], 0x10, "No matching subscribers: {frame:?}");

    // With a subscriber: success (a 2-byte PUBACK, code 0 implied, or an explicit 0).
    client.subscribe(&topic, QoS::AtMostOnce);
    client.send(Packet::Publish(Publish {
        pkid: 3,
        ..Publish::new(&topic, QoS::AtLeastOnce, "y", None)
    }));
    let mut saw_ack = false;
    for _ in 0..2 {
        let frame = client.read();
        if frame.first_byte == 0x40 {
            assert_eq!(frame.body.get(2).copied().unwrap_or(0), 0, "{frame:?}");
            saw_ack = true;
        }
    }
    assert!(saw_ack);
}

#[test]
fn issue8_suback_codes() {
    let broker = broker_with(|c| {
        c.limits.qos_max = 1;
        c.limits.subscriptions_per_client_max = 2;
    });
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-suback"));
    let codes = client.subscribe_codes(
        vec![
            Filter::new("a/b", QoS::ExactlyOnce),
            Filter::new("a/#/c", QoS::AtMostOnce),
            Filter::new("x/+", QoS::AtMostOnce),
            Filter::new("one/too/many", QoS::AtMostOnce),
        ],
        None,
    );
    // Granted QoS 1 (capped by qos_max), Topic Filter invalid, Granted QoS 0, Quota exceeded.
    assert_eq!(codes, vec![0x01, 0x8F, 0x00, 0x97]);

    // Subscription Identifiers are supported (tests/mqtt5_subid.rs): granted.
    let codes = client.subscribe_codes(
        vec![Filter::new("a/b", QoS::AtMostOnce)],
        Some(SubscribeProperties {
            id: Some(7),
            user_properties: Vec::new(),
        }),
    );
    assert_eq!(codes, vec![0x00]);
}

#[test]
fn issue8_no_local_on_a_shared_subscription_is_a_protocol_error() {
    // [MQTT-3.8.3-4]
    let broker = start_broker();
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-nolocal-shared"));
    client.send(Packet::Subscribe(Subscribe {
        pkid: 1,
        ..Subscribe::new(
            Filter {
                nolocal: true,
                ..Filter::new("$share/g/t", QoS::AtMostOnce)
            },
            None,
        )
    }));
    let frame = client.read();
    assert_eq!(frame.first_byte, 0xE0, "server DISCONNECT: {frame:?}");
    assert_eq!(frame.reason_code(), 0x82);
    assert!(client.closed());
}

#[test]
fn issue8_unsuback_codes() {
    // [MQTT-3.11.3-1] One code per filter: 0x00 removed, 0x11 No subscription existed.
    let broker = start_broker();
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-unsuback"));
    client.subscribe("held/one", QoS::AtMostOnce);
    client.send(Packet::Unsubscribe(Unsubscribe {
        pkid: 4,
        filters: vec!["never/held".into(), "held/one".into()],
        properties: None,
    }));
    let frame = client.read();
    assert_eq!(frame.first_byte, 0xB0, "UNSUBACK: {frame:?}");
    assert_eq!(frame.reason_codes(), vec![0x11, 0x00]);
}

#[test]
fn issue8_retain_handling() {
    let broker = start_broker();
    let topic = unique_topic("v5/rh");
    let mut publisher = V5Client::connect(broker.addr(), &unique_id("v5-rh-pub"));
    publisher.send(Packet::Publish(Publish {
        pkid: 1,
        retain: true,
        ..Publish::new(&topic, QoS::AtLeastOnce, "kept", None)
    }));
    assert_eq!(publisher.read().first_byte, 0x40);

    let with_rule = |rule| Filter {
        retain_forward_rule: rule,
        ..Filter::new(&topic, QoS::AtMostOnce)
    };
    // 2: never; the SUBACK then nothing.
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-rh2"));
    assert_eq!(
        client.subscribe_codes(vec![with_rule(RetainForwardRule::Never)], None),
        [0]
    );
    assert!(
        client.try_read(QUIET).is_none(),
        "Retain Handling 2 sends no retained"
    );

    // 1: only when the subscription is new.
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-rh1"));
    let rule = || with_rule(RetainForwardRule::OnNewSubscribe);
    assert_eq!(client.subscribe_codes(vec![rule()], None), [0]);
    assert_eq!(&client.read_publish().payload[..], b"kept");
    assert_eq!(client.subscribe_codes(vec![rule()], None), [0]);
    assert!(
        client.try_read(QUIET).is_none(),
        "not again for an existing one"
    );

    // 0: on every subscribe.
    let rule = with_rule(RetainForwardRule::OnEverySubscribe);
    assert_eq!(client.subscribe_codes(vec![rule], None), [0]);
    let publish = client.read_publish();
    assert_eq!(&publish.payload[..], b"kept");
    assert!(publish.retain);
}

/// No Local [MQTT-3.8.3-3] and Retain As Published [MQTT-3.3.1-12], on one shard and across
/// shards (the publisher's RETAIN flag travels with the forward).
fn check_no_local_and_retain_as_published(shards: usize) {
    let broker = broker_with(|c| c.shards = shards);
    let topic = unique_topic("v5/options");
    let mut me = V5Client::connect(broker.addr(), &id_on_shard("v5-me", 0, shards));
    let codes = me.subscribe_codes(
        vec![Filter {
            nolocal: true,
            ..Filter::new(&topic, QoS::AtMostOnce)
        }],
        None,
    );
    assert_eq!(codes, [0]);
    let mut keeper = V5Client::connect(broker.addr(), &id_on_shard("v5-rap", shards - 1, shards));
    let codes = keeper.subscribe_codes(
        vec![Filter {
            preserve_retain: true,
            ..Filter::new(&topic, QoS::AtLeastOnce)
        }],
        None,
    );
    assert_eq!(codes, [1]);
    let mut plain = V5Client::connect(broker.addr(), &id_on_shard("v5-plain", shards - 1, shards));
    plain.subscribe(&topic, QoS::AtLeastOnce);
    std::thread::sleep(Duration::from_millis(if shards > 1 { 300 } else { 0 }));

    me.send(Packet::Publish(Publish {
        retain: true,
        ..Publish::new(&topic, QoS::AtMostOnce, "mine", None)
    }));
    let publish = keeper.read_publish();
    assert_eq!(&publish.payload[..], b"mine");
    assert!(
        publish.retain,
        "Retain As Published keeps RETAIN on a live message"
    );
    let publish = plain.read_publish();
    assert_eq!(&publish.payload[..], b"mine");
    assert!(
        !publish.retain,
        "[MQTT-3.3.1-9] live delivery clears RETAIN by default"
    );
    assert!(
        me.try_read(QUIET).is_none(),
        "No Local: not back to its publisher"
    );

    // Someone else's message does reach the No Local subscriber.
    plain.send(Packet::Publish(Publish::new(
        &topic,
        QoS::AtMostOnce,
        "theirs",
        None,
    )));
    assert_eq!(&me.read_publish().payload[..], b"theirs");
}

#[test]
fn issue8_no_local_and_retain_as_published_one_shard() {
    check_no_local_and_retain_as_published(1);
}

#[test]
fn issue8_no_local_and_retain_as_published_across_shards() {
    check_no_local_and_retain_as_published(4);
}

/// A will is its client's message: the client's own No Local subscription does not take it
/// [MQTT-3.8.3-3], not even queued in its session while it is away; an overlapping plain one
/// does, and another client's No Local one does. (Found by tests/differential/run.py: the
/// will came back to its own session as if published by nobody.)
#[test]
fn no_local_keeps_a_clients_own_will_from_its_session() {
    let broker = start_broker();
    let topic = unique_topic("v5/will-nolocal");
    let id = unique_id("v5-will-nolocal");
    let lasting = || with_expiry(300);
    let no_local = |filter: &str| Filter {
        nolocal: true,
        ..Filter::new(filter, QoS::AtLeastOnce)
    };
    let mut other = V5Client::connect(broker.addr(), &unique_id("v5-will-other"));
    assert_eq!(other.subscribe_codes(vec![no_local(&topic)], None), [1]);
    let will = LastWill::new(&topic, "gone", QoS::AtLeastOnce, false, None);
    let (mut client, frame) =
        V5Client::connect_with(broker.addr(), connect(&id, true, lasting()), Some(will));
    assert_eq!(frame.reason_code(), 0);
    assert_eq!(client.subscribe_codes(vec![no_local(&topic)], None), [1]);
    drop(client); // no DISCONNECT: the will goes at once (no delay)
    let publish = other.receive();
    assert_eq!(
        &publish.payload[..],
        b"gone",
        "another client's No Local takes it"
    );

    let (mut client, frame) =
        V5Client::connect_accepted(broker.addr(), connect(&id, false, lasting()));
    assert_eq!(frame.body[0] & 1, 1, "session present");
    client.expect_no_publish("its own will, through its own No Local subscription");

    // With a plain subscription beside the No Local one, the will comes back once.
    let will = LastWill::new(&topic, "gone again", QoS::AtLeastOnce, false, None);
    drop(client);
    let (mut client, _) =
        V5Client::connect_with(broker.addr(), connect(&id, false, lasting()), Some(will));
    client.subscribe("#", QoS::AtLeastOnce);
    drop(client);
    assert_eq!(&other.receive().payload[..], b"gone again");
    let (mut client, _) = V5Client::connect_accepted(broker.addr(), connect(&id, false, lasting()));
    assert_eq!(&client.receive().payload[..], b"gone again");
    client.expect_no_publish("one copy");
}

#[test]
fn issue8_over_receive_maximum_gets_disconnect_0x93() {
    // CONNACK said Receive Maximum 2; a third QoS 2 PUBLISH unreleased is one too many.
    let broker = broker_with(|c| c.limits.incoming_inflight_max = 2);
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-recvmax"));
    for pkid in 1..=3 {
        client.send(Packet::Publish(Publish {
            pkid,
            ..Publish::new("t/recvmax", QoS::ExactlyOnce, "x", None)
        }));
    }
    let mut last = None;
    while let Some(frame) = client.try_read(WAIT) {
        last = Some(frame);
    }
    let frame = last.expect("packets before the close");
    assert_eq!(frame.first_byte, 0xE0, "server DISCONNECT last: {frame:?}");
    assert_eq!(frame.reason_code(), 0x93, "Receive Maximum exceeded");
}

fn with_expiry_interval(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..rich_properties()
    }
}

#[test]
fn issue8_queued_messages_keep_properties_and_expire() {
    // [MQTT-3.3.2-5] An expired message is not delivered; [MQTT-3.3.2-6] a delivered one
    // carries what is left of its interval.
    let broker = start_broker();
    let id = unique_id("v5-queued");
    let topic = unique_topic("v5/queued");
    let (mut client, _) = resume(broker.addr(), &id, with_expiry(60));
    client.subscribe(&topic, QoS::AtLeastOnce);
    leave(client, None);
    let mut publisher = V5Client::connect(broker.addr(), &unique_id("v5-queued-pub"));
    for (pkid, (payload, interval)) in [("short", 1), ("long", 3600)].into_iter().enumerate() {
        publisher.send(Packet::Publish(Publish {
            pkid: pkid as u16 + 1,
            ..Publish::new(
                &topic,
                QoS::AtLeastOnce,
                payload,
                Some(with_expiry_interval(interval)),
            )
        }));
        assert_eq!(publisher.read().first_byte, 0x40, "PUBACK");
    }
    std::thread::sleep(Duration::from_millis(2_500));
    let (mut client, present) = resume(broker.addr(), &id, with_expiry(60));
    assert!(present);
    let publish = client.read_publish();
    assert_eq!(&publish.payload[..], b"long", "the expired one was dropped");
    let properties = publish
        .properties
        .expect("queued messages keep their properties");
    let left = properties.message_expiry_interval.expect("expiry interval");
    assert!(
        (3590..3600).contains(&left),
        "what is left of 3600 s: {left}"
    );
    assert_eq!(
        PublishProperties {
            message_expiry_interval: None,
            ..properties
        },
        PublishProperties {
            message_expiry_interval: None,
            ..rich_properties()
        }
    );
    assert!(client.try_read(QUIET).is_none(), "nothing else");
}

#[test]
fn issue8_retained_messages_keep_properties_and_expire() {
    let broker = start_broker();
    let kept = unique_topic("v5/retained-kept");
    let gone = unique_topic("v5/retained-gone");
    let mut publisher = V5Client::connect(broker.addr(), &unique_id("v5-ret-pub"));
    for (pkid, (topic, interval)) in [(&kept, 3600), (&gone, 1)].into_iter().enumerate() {
        publisher.send(Packet::Publish(Publish {
            pkid: pkid as u16 + 1,
            retain: true,
            ..Publish::new(
                topic,
                QoS::AtLeastOnce,
                "r",
                Some(with_expiry_interval(interval)),
            )
        }));
        assert_eq!(publisher.read().first_byte, 0x40, "PUBACK");
    }
    std::thread::sleep(Duration::from_millis(2_500));
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-ret-sub"));
    client.subscribe(&gone, QoS::AtLeastOnce);
    assert!(
        client.try_read(QUIET).is_none(),
        "the expired retained message is not sent"
    );
    client.subscribe(&kept, QoS::AtLeastOnce);
    let publish = client.read_publish();
    assert!(publish.retain);
    let properties = publish
        .properties
        .expect("retained messages keep their properties");
    assert_eq!(
        properties.user_properties,
        rich_properties().user_properties
    );
    let left = properties.message_expiry_interval.expect("expiry interval");
    assert!(
        (3590..3600).contains(&left),
        "what is left of 3600 s: {left}"
    );
}

#[test]
fn issue8_client_receive_maximum_bounds_our_unacknowledged_sends() {
    // [MQTT-3.3.4-7] No more unacknowledged QoS 1/2 PUBLISHes than the client's Receive Maximum.
    let broker = start_broker();
    let topic = unique_topic("v5/recv-max");
    let properties = ConnectProperties {
        receive_maximum: Some(2),
        ..ConnectProperties::new()
    };
    let (mut client, frame) = V5Client::connect_with(
        broker.addr(),
        connect(&unique_id("v5-recv-max"), true, Some(properties)),
        None,
    );
    assert_eq!(frame.reason_code(), 0);
    client.subscribe(&topic, QoS::AtLeastOnce);
    let mut publisher = V5Client::connect(broker.addr(), &unique_id("v5-recv-max-pub"));
    for pkid in 1..=5u16 {
        publisher.send(Packet::Publish(Publish {
            pkid,
            ..Publish::new(&topic, QoS::AtLeastOnce, vec![pkid as u8], None)
        }));
    }
    let first: Vec<Publish> = (0..2).map(|_| client.read_publish()).collect();
    assert!(client.try_read(QUIET).is_none(), "a third waits for an ack");
    client.send(Packet::PubAck(rumqttc::v5::mqttbytes::v5::PubAck::new(
        first[0].pkid,
        None,
    )));
    let third = client.read_publish();
    assert_eq!(&third.payload[..], &[3]);
    assert!(client.try_read(QUIET).is_none(), "still two unacknowledged");
}

#[test]
fn issue8_payload_said_to_be_utf8_is_checked() {
    // Payload Format Indicator 1 with bytes that are not UTF-8: PUBACK 0x99, not delivered;
    // at QoS 0 (no ack) DISCONNECT 0x99.
    let broker = start_broker();
    let topic = unique_topic("v5/utf8");
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-utf8"));
    client.subscribe(&topic, QoS::AtMostOnce);
    let utf8 = || {
        Some(PublishProperties {
            payload_format_indicator: Some(1),
            ..PublishProperties::default()
        })
    };
    client.send(Packet::Publish(Publish {
        pkid: 1,
        ..Publish::new(&topic, QoS::AtLeastOnce, vec![0xFF, 0xFE], utf8())
    }));
    let frame = client.read();
    assert_eq!(
        frame.first_byte, 0x40,
        "PUBACK, nothing delivered first: {frame:?}"
    );
    assert_eq!(frame.body[2], 0x99, "Payload format invalid");
    client.send(Packet::Publish(Publish::new(
        &topic,
        QoS::AtMostOnce,
        "fine ✓",
        utf8(),
    )));
    assert_eq!(client.read_publish().payload, "fine ✓".as_bytes());
    client.send(Packet::Publish(Publish::new(
        &topic,
        QoS::AtMostOnce,
        vec![0xC0],
        utf8(),
    )));
    let frame = client.read();
    assert_eq!(frame.first_byte, 0xE0, "server DISCONNECT: {frame:?}");
    assert_eq!(frame.reason_code(), 0x99);
    assert!(client.closed());
}

#[test]
fn issue8_connect_and_a_malformed_packet_in_one_write_get_connack_then_disconnect() {
    // The CONNACK already in the outbox is not lost to the DISCONNECT (found by the fuzzer).
    let broker = start_broker();
    let mut client = V5Client::open(broker.addr());
    let mut bytes = BytesMut::new();
    Packet::Connect(connect(&unique_id("v5-one-write"), true, None), None, None)
        .write(&mut bytes, None)
        .expect("encodes");
    bytes.extend_from_slice(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
    client.send_bytes(&bytes);
    assert_eq!(client.read().reason_code(), 0x00, "CONNACK first");
    let frame = client.read();
    assert_eq!(frame.first_byte, 0xE0, "then DISCONNECT: {frame:?}");
    assert_eq!(frame.reason_code(), 0x81);
    assert!(client.closed());
}

fn delayed_will(topic: &str, delay_secs: u32) -> LastWill {
    LastWill::new(
        topic,
        "late",
        QoS::AtMostOnce,
        false,
        Some(rumqttc::v5::mqttbytes::v5::LastWillProperties {
            delay_interval: Some(delay_secs),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    )
}

#[test]
fn issue8_will_delay_interval() {
    let broker = start_broker();
    let topic = unique_topic("v5/will-delay");
    let mut watcher = V5Client::connect(broker.addr(), &unique_id("v5-delay-watch"));
    watcher.subscribe(&topic, QoS::AtMostOnce);

    // Delay 2 s, session 60 s: the will waits out the delay (the timer ticks each second).
    let id = unique_id("v5-delay");
    let (client, _) = V5Client::connect_with(
        broker.addr(),
        connect(&id, true, with_expiry(60)),
        Some(delayed_will(&topic, 2)),
    );
    let gone = Instant::now();
    drop(client);
    assert!(
        watcher.try_read(Duration::from_millis(900)).is_none(),
        "not before the delay"
    );
    let publish = watcher.read_publish();
    assert_eq!(&publish.payload[..], b"late");
    assert!(
        gone.elapsed() >= Duration::from_secs(1),
        "{:?}",
        gone.elapsed()
    );
    assert_eq!(
        publish.properties.and_then(|p| p.message_expiry_interval),
        None,
        "Will Delay Interval is not passed on"
    );

    // [MQTT-3.1.3-9] Back before the delay: no will.
    let (client, _) = V5Client::connect_with(
        broker.addr(),
        connect(&id, false, with_expiry(60)),
        Some(delayed_will(&topic, 2)),
    );
    drop(client);
    std::thread::sleep(Duration::from_millis(300));
    let (_back, frame) =
        V5Client::connect_with(broker.addr(), connect(&id, false, with_expiry(60)), None);
    assert!(frame.connack().session_present);
    assert!(
        watcher.try_read(Duration::from_secs(3)).is_none(),
        "the will was cancelled"
    );
}

/// [MQTT-3.1.2-8] A will is not published when "a new Network Connection for the ClientID is
/// opened before the Will Delay Interval has elapsed": with Clean Start 0 or 1 (though Clean
/// Start 1 ends the session, which under 3.1.3.2.2 would send the will; the numbered rule and
/// mosquitto's own suite, 07-will-delay-recover, say no will), after a drop or at a take-over.
fn check_reconnect_cancels_a_delayed_will(shards: usize) {
    let broker = broker_with(|c| c.shards = shards);
    let topic = unique_topic("v5/will-clean-start");
    let mut watcher = V5Client::connect(broker.addr(), &unique_id("v5-wcs-watch"));
    watcher.subscribe(&topic, QoS::AtMostOnce);
    for take_over in [false, true] {
        for clean_start in [true, false] {
            let id = unique_id("v5-wcs");
            let (old, _) = V5Client::connect_with(
                broker.addr(),
                connect(&id, true, with_expiry(300)),
                Some(delayed_will(&topic, 60)),
            );
            let old = if take_over {
                Some(old)
            } else {
                drop(old);
                std::thread::sleep(Duration::from_millis(300));
                None
            };
            let (_new, frame) = V5Client::connect_with(
                broker.addr(),
                connect(&id, clean_start, with_expiry(300)),
                None,
            );
            assert_eq!(frame.connack().session_present, !clean_start);
            let case = format!("take-over {take_over}, clean start {clean_start}");
            assert!(
                watcher.try_read(Duration::from_secs(2)).is_none(),
                "{case}: the will was cancelled"
            );
            drop(old);
        }
    }
}

#[test]
fn a_reconnect_with_either_clean_start_cancels_a_delayed_will_one_shard() {
    check_reconnect_cancels_a_delayed_will(1);
}

#[test]
fn a_reconnect_with_either_clean_start_cancels_a_delayed_will_two_shards() {
    check_reconnect_cancels_a_delayed_will(2);
}

#[test]
fn issue8_will_goes_when_the_session_ends_before_its_delay() {
    // Will Delay 60 s, Session Expiry 1 s: sent when the session ends.
    let broker = start_broker();
    let topic = unique_topic("v5/will-session");
    let mut watcher = V5Client::connect(broker.addr(), &unique_id("v5-ws-watch"));
    watcher.subscribe(&topic, QoS::AtMostOnce);
    let (client, _) = V5Client::connect_with(
        broker.addr(),
        connect(&unique_id("v5-ws"), true, with_expiry(1)),
        Some(delayed_will(&topic, 60)),
    );
    drop(client);
    assert_eq!(&watcher.read_publish().payload[..], b"late");
}
