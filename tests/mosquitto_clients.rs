//! The mosquitto command-line clients against ringmq: the most common MQTT client code in the
//! wild, as separate processes. These tests need `mosquitto_pub`, `mosquitto_sub` and
//! `mosquitto_passwd`; without them they fail and say to run tests/setup.sh.

mod common;

use common::*;

/// mosquitto_sub at `sub_qos` receives one message from mosquitto_pub at `pub_qos`.
fn pub_to_sub(pub_qos: u8, sub_qos: u8, version: &str) {
    let broker = start_broker();
    let topic = unique_topic("mosq");
    let payload = format!("hello q{pub_qos} {version}");
    let sub = mosquitto_sub(broker.port(), &topic, sub_qos, 1, &["-V", version]);
    let published = mosquitto_pub(
        broker.port(),
        &[
            "-V",
            version,
            "-t",
            &topic,
            "-q",
            &pub_qos.to_string(),
            "-m",
            &payload,
        ],
    );
    assert!(
        published.status.success(),
        "mosquitto_pub failed: {published:?}"
    );
    let received = sub.finish();
    assert!(
        received.status.success(),
        "mosquitto_sub failed: {received:?}"
    );
    assert_eq!(
        sub_messages(&received),
        vec![(topic, pub_qos.min(sub_qos), false, payload)],
        "output: {:?}",
        received.stdout
    );
}

#[test]
fn qos0_from_mosquitto_pub_to_mosquitto_sub() {
    pub_to_sub(0, 0, "mqttv311");
}

#[test]
fn qos1_from_mosquitto_pub_to_mosquitto_sub() {
    pub_to_sub(1, 1, "mqttv311");
}

#[test]
fn qos2_from_mosquitto_pub_to_mosquitto_sub() {
    pub_to_sub(2, 2, "mqttv311");
}

#[test]
fn qos2_publish_to_qos1_subscription_is_downgraded() {
    pub_to_sub(2, 1, "mqttv311");
}

#[test]
fn mqtt31_clients_work() {
    // -V mqttv31: protocol name "MQIsdp", level 3.
    pub_to_sub(1, 1, "mqttv31");
}

#[test]
fn mqtt31_publisher_reaches_mqtt311_subscriber() {
    let broker = start_broker();
    let topic = unique_topic("mixed");
    let sub = mosquitto_sub(broker.port(), &topic, 1, 1, &["-V", "mqttv311"]);
    let published = mosquitto_pub(
        broker.port(),
        &[
            "-V",
            "mqttv31",
            "-t",
            &topic,
            "-q",
            "1",
            "-m",
            "across versions",
        ],
    );
    assert!(published.status.success(), "{published:?}");
    let received = sub.finish();
    assert_eq!(
        sub_messages(&received),
        vec![(topic, 1, false, "across versions".to_string())]
    );
}

#[test]
fn several_messages_arrive_in_order() {
    let broker = start_broker();
    let topic = unique_topic("lines");
    let sub = mosquitto_sub(broker.port(), &topic, 1, 5, &[]);
    for i in 0..5 {
        let published = mosquitto_pub(
            broker.port(),
            &["-t", &topic, "-q", "1", "-m", &format!("m{i}")],
        );
        assert!(published.status.success(), "{published:?}");
    }
    let received = sub.finish();
    let payloads: Vec<String> = sub_messages(&received).into_iter().map(|m| m.3).collect();
    assert_eq!(payloads, vec!["m0", "m1", "m2", "m3", "m4"]);
}

#[test]
fn retained_message_with_r() {
    let broker = start_broker();
    let topic = unique_topic("mosq-retained");
    let published = mosquitto_pub(
        broker.port(),
        &["-t", &topic, "-q", "1", "-r", "-m", "kept"],
    );
    assert!(published.status.success(), "{published:?}");

    // A subscriber that arrives later gets it with the retain flag [MQTT-3.3.1-8].
    let received = mosquitto_sub(broker.port(), &topic, 1, 1, &[]).finish();
    assert_eq!(
        sub_messages(&received),
        vec![(topic.clone(), 1, true, "kept".to_string())]
    );

    // `-n -r` (empty retained payload) deletes it [MQTT-3.3.1-10]: a later subscriber sees only
    // the live message published after its SUBACK.
    let deleted = mosquitto_pub(broker.port(), &["-t", &topic, "-q", "1", "-r", "-n"]);
    assert!(deleted.status.success(), "{deleted:?}");
    let sub = mosquitto_sub(broker.port(), &topic, 1, 1, &[]);
    let live = mosquitto_pub(broker.port(), &["-t", &topic, "-q", "1", "-m", "live"]);
    assert!(live.status.success(), "{live:?}");
    assert_eq!(
        sub_messages(&sub.finish()),
        vec![(topic, 1, false, "live".to_string())]
    );
}

#[test]
fn will_of_killed_mosquitto_sub_is_published() {
    let broker = start_broker();
    let will_topic = unique_topic("mosq-will");
    let watcher = mosquitto_sub(broker.port(), &will_topic, 1, 1, &[]);
    let mut doomed = mosquitto_sub(
        broker.port(),
        &unique_topic("doomed"),
        0,
        1,
        &[
            "--will-topic",
            &will_topic,
            "--will-payload",
            "killed",
            "--will-qos",
            "1",
        ],
    );
    doomed.kill(); // SIGKILL: no DISCONNECT, the socket just closes
    assert_eq!(
        sub_messages(&watcher.finish()),
        vec![(will_topic, 1, false, "killed".to_string())]
    );
}

#[test]
fn will_of_cleanly_disconnecting_client_is_not_published() {
    // [MQTT-3.14.4-3] mosquitto_pub sends DISCONNECT after publishing: its will is discarded.
    let broker = start_broker();
    let will_topic = unique_topic("mosq-nowill");
    let topic = unique_topic("mosq-nowill-data");
    let mut watcher = MqttClient::connect(mqtt_options(broker.addr(), "nowill-watch"));
    watcher.subscribe(&will_topic, rumqttc::QoS::AtLeastOnce);
    let published = mosquitto_pub(
        broker.port(),
        &[
            "-t",
            &topic,
            "-m",
            "x",
            "--will-topic",
            &will_topic,
            "--will-payload",
            "nope",
        ],
    );
    assert!(published.status.success(), "{published:?}");
    watcher.expect_no_publish();
}

fn auth_broker(dir: &TempDir) -> TestBroker {
    let mut config = test_config();
    config.password_file = Some(password_file(dir, &[("alice", "wonderland")]));
    config.allow_anonymous = false;
    TestBroker::start(config)
}

#[test]
fn username_and_password_from_mosquitto_passwd_are_accepted() {
    let dir = TempDir::new("mosq-auth");
    let broker = auth_broker(&dir);
    let topic = unique_topic("auth");
    let credentials = ["-u", "alice", "-P", "wonderland"];
    let sub = mosquitto_sub(broker.port(), &topic, 1, 1, &credentials);
    let mut args = vec!["-t", topic.as_str(), "-q", "1", "-m", "authorised"];
    args.extend(credentials);
    let published = mosquitto_pub(broker.port(), &args);
    assert!(published.status.success(), "{published:?}");
    assert_eq!(
        sub_messages(&sub.finish()),
        vec![(topic, 1, false, "authorised".to_string())]
    );
}

#[test]
fn wrong_password_is_refused() {
    let dir = TempDir::new("mosq-auth");
    let broker = auth_broker(&dir);
    let refused = mosquitto_pub(
        broker.port(),
        &["-t", "t", "-m", "x", "-u", "alice", "-P", "builder"],
    );
    assert!(
        !refused.status.success(),
        "wrong password accepted: {refused:?}"
    );
    // CONNACK 4: mosquitto words it "bad user name or password".
    assert!(
        refused
            .stderr
            .to_lowercase()
            .contains("bad user name or password"),
        "expected CONNACK 4, stderr: {}",
        refused.stderr
    );
}

#[test]
fn anonymous_is_refused_when_not_allowed() {
    let dir = TempDir::new("mosq-auth");
    let broker = auth_broker(&dir);
    let refused = mosquitto_pub(broker.port(), &["-t", "t", "-m", "x"]);
    assert!(!refused.status.success(), "anonymous accepted: {refused:?}");
    // CONNACK 5: "not authorised".
    assert!(
        refused.stderr.to_lowercase().contains("not authori"),
        "expected CONNACK 5, stderr: {}",
        refused.stderr
    );
}

#[test]
fn persistent_mosquitto_sub_gets_messages_sent_while_away() {
    // `-c -i ID`: clean session 0. `-E` subscribes and leaves (DISCONNECT); the session stays.
    let broker = start_broker();
    let topic = unique_topic("mosq-persist");
    let id = unique_id("mosq-persist");
    let subscribed = Proc::spawn(
        "mosquitto_sub",
        &strings(&[
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-c",
            "-i",
            &id,
            "-q",
            "1",
            "-t",
            &topic,
            "-E",
        ]),
    )
    .finish();
    assert!(subscribed.status.success(), "{subscribed:?}");
    for i in 0..3 {
        let published = mosquitto_pub(
            broker.port(),
            &["-t", &topic, "-q", "1", "-m", &format!("away {i}")],
        );
        assert!(published.status.success(), "{published:?}");
    }
    // Back with the same id: the queued messages arrive without subscribing again (the topic
    // passed to -t is a different one, so only the old session's subscription can match).
    let other = unique_topic("mosq-persist-other");
    // The queued messages may come before the SUBACK, so don't wait for it.
    let args = mosquitto_sub_args(broker.port(), &other, 1, 3, &["-c", "-i", &id]);
    let received = Proc::spawn("mosquitto_sub", &args).finish();
    let payloads: Vec<String> = sub_messages(&received).into_iter().map(|m| m.3).collect();
    assert_eq!(payloads, vec!["away 0", "away 1", "away 2"], "{received:?}");
}

#[test]
fn mosquitto_sub_with_wildcards_and_several_topics() {
    let broker = start_broker();
    let root = unique_topic("mosq-wild");
    let sub = mosquitto_sub(
        broker.port(),
        &format!("{root}/+/temp"),
        0,
        2,
        &["-t", &format!("{root}/alarm/#")],
    );
    for topic in ["kitchen/temp", "kitchen/humidity", "alarm", "hall/temp"] {
        let published = mosquitto_pub(
            broker.port(),
            &["-t", &format!("{root}/{topic}"), "-m", topic],
        );
        assert!(published.status.success(), "{published:?}");
    }
    let topics: Vec<String> = sub_messages(&sub.finish())
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(
        topics,
        vec![format!("{root}/kitchen/temp"), format!("{root}/alarm")]
    );
}
