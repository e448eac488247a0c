//! Access control (issue 9 item 4): a mosquitto-format `acl_file` applied to SUBSCRIBE (SUBACK
//! 0x80 / 0x87), PUBLISH (dropped and acknowledged under 3.1.1; PUBACK/PUBREC 0x87 under 5.0),
//! each delivery (a wildcard subscription does not receive unreadable topics, nor retained
//! ones), and the will (CONNACK 5 / 0x87); every rule kind (topic read/write/readwrite/deny,
//! pattern %c and %u, the anonymous section); on 1 shard and on 4 where the publisher and the
//! subscriber live on different shards. Then the binary: SIGHUP reloads the password and ACL
//! files without dropping a connection, a malformed reload keeps the old files, and a malformed
//! ACL is refused at start with its line.
//!
//! Clients: rumqttc (3.1.1), rumqttc's v5 codec over a socket, mosquitto_pub/sub (-V 5 too),
//! and raw bytes for wills.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::binary::{run_to_exit, Ringmq};
use common::v5::{self, Frame, V5Client};
use common::*;
use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, Login, Packet as V5Packet, Publish as V5Publish,
    SubscribeReasonCode as V5SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::QoS;

/// The ACL every broker here runs with (alice and bob are in the password file).
const ACL: &str = "\
# Anonymous clients: the topic lines before any `user` line.
topic read public/#
topic deny public/secret
topic read will/#
topic read test/#

user alice
topic readwrite alice/#
topic deny alice/private/#
topic read shared/#
topic write public/#
topic write will/alice

user bob
topic write feeds/#

# Everyone: their own devices, their own feed, and never test/nosubscribe.
pattern readwrite devices/%c/#
pattern read feeds/%u/#
pattern deny test/nosubscribe
";

const ALICE: (&str, &str) = ("alice", "alice-pw");
const BOB: (&str, &str) = ("bob", "bob-pw");

/// A broker with `ACL` and a password file for alice and bob; anonymous clients allowed.
struct AclBroker {
    broker: TestBroker,
    shards: usize,
    _dir: TempDir,
}

impl AclBroker {
    fn start(shards: usize) -> AclBroker {
        let dir = TempDir::new("acl");
        let passwd = password_file(&dir, &[ALICE, BOB]);
        let acl = dir.path().join("acl");
        std::fs::write(&acl, ACL).unwrap();
        let mut config = test_config();
        config.shards = shards;
        config.password_file = Some(passwd);
        config.acl_file = Some(acl);
        AclBroker {
            broker: TestBroker::start(config),
            shards,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.broker.addr()
    }

    fn port(&self) -> u16 {
        self.broker.port()
    }

    /// A client id homed on the first shard (subscribers) or the last (publishers).
    fn id_first(&self, prefix: &str) -> String {
        unique_id_on(0, self.shards, prefix)
    }

    fn id_last(&self, prefix: &str) -> String {
        unique_id_on(self.shards - 1, self.shards, prefix)
    }

    /// A rumqttc 3.1.1 client with this id and, optionally, a user.
    fn client(&self, id: &str, user: Option<(&str, &str)>) -> MqttClient {
        let mut options = mqtt_options_with_id(self.addr(), id);
        if let Some((username, password)) = user {
            options.set_credentials(username, password);
        }
        MqttClient::connect(options)
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT 5 through rumqttc's v5 codec over a plain socket
// ---------------------------------------------------------------------------------------------

/// This file's own helpers on the shared v5 client (tests/common/v5.rs): a user's connection,
/// subscriptions at QoS 1, and publishes whose answer the test judges.
impl V5Client {
    /// CONNECT as `id` (with a user and a will if given); returns the client and its CONNACK.
    fn connect_as(
        addr: SocketAddr,
        id: &str,
        user: Option<(&str, &str)>,
        will: Option<LastWill>,
    ) -> (V5Client, Frame) {
        let login = user.map(|(username, password)| Login::new(username, password));
        V5Client::connect_login(addr, v5::connect(id, true, None), will, login)
    }

    fn connect_user(addr: SocketAddr, id: &str, user: Option<(&str, &str)>) -> V5Client {
        let (client, connack) = V5Client::connect_as(addr, id, user, None);
        assert_eq!(connack.reason_code(), 0, "CONNACK: {connack:?}");
        client
    }

    /// SUBSCRIBE to each filter at QoS 1; the SUBACK's reason codes, in order.
    fn subscribe_qos1(&mut self, filters: &[&str]) -> Vec<V5SubscribeReasonCode> {
        let filters = filters.iter().map(|f| Filter::new(*f, V5QoS::AtLeastOnce));
        self.subscribe_frame(filters.collect(), None)
            .suback()
            .return_codes
    }

    /// PUBLISH at QoS 1 or 2; the PUBACK / PUBREC that answers it.
    fn publish_answered(&mut self, topic: &str, qos: V5QoS, payload: &str) -> Frame {
        let mut publish = V5Publish::new(topic, qos, payload.to_string(), None);
        publish.pkid = 11;
        self.publish(publish)
    }

    fn publish_qos0(&mut self, topic: &str, payload: &str) {
        let publish = V5Publish::new(topic, V5QoS::AtMostOnce, payload.to_string(), None);
        self.send(V5Packet::Publish(publish));
    }

    /// The next PUBLISH's (topic, payload).
    fn try_read_publish(&mut self, within: Duration) -> Option<(String, String)> {
        match self.try_read(within)?.packet {
            Some(V5Packet::Publish(p)) => Some((
                String::from_utf8_lossy(&p.topic).into_owned(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

fn payload_of(publish: &rumqttc::Publish) -> String {
    String::from_utf8_lossy(&publish.payload).into_owned()
}

fn topic_of(publish: &rumqttc::Publish) -> String {
    publish.topic.clone()
}

/// mosquitto_sub's SUBACK line for one filter (`-C 1 -W 1`: it may get nothing).
fn mosquitto_suback(port: u16, filter: &str, extra: &[&str]) -> String {
    let mut args = strings(&["-h", "127.0.0.1", "-p", &port.to_string(), "-d"]);
    args.extend(strings(&["-t", filter, "-q", "1", "-C", "1", "-W", "1"]));
    args.extend(strings(extra));
    let finished = Proc::spawn("mosquitto_sub", &args).finish();
    finished
        .stdout
        .iter()
        .find(|line| line.starts_with("Subscribed"))
        .cloned()
        .unwrap_or_else(|| panic!("no SUBACK line: {:?} {}", finished.stdout, finished.stderr))
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE
// ---------------------------------------------------------------------------------------------

fn check_subscribe(shards: usize) {
    let broker = AclBroker::start(shards);
    // 3.1.1 through rumqttc: a user's grants, its denial, filters wider than the grant, a
    // write-only topic, a pattern's deny, a `$share` of a readable filter.
    let mut alice = broker.client(&broker.id_last("alice"), Some(ALICE));
    let granted = alice.subscribe_many(&[
        ("alice/#", QoS::AtLeastOnce),
        ("alice/private/notes", QoS::AtLeastOnce),
        ("#", QoS::AtLeastOnce),
        ("shared/+", QoS::AtLeastOnce),
        ("public/#", QoS::AtLeastOnce),
        ("test/nosubscribe", QoS::AtLeastOnce),
        ("$share/g/alice/x", QoS::AtLeastOnce),
        ("feeds/alice/#", QoS::AtLeastOnce),
        ("feeds/bob/#", QoS::AtLeastOnce),
    ]);
    let ok = Some(QoS::AtLeastOnce);
    assert_eq!(
        granted,
        [ok, None, None, ok, None, None, ok, ok, None],
        "alice: grant, deny, too wide, read, write only, pattern deny, $share, %u, other's %u"
    );

    // The anonymous section applies to a client without a username, and only to it; deny
    // overrides a grant (`topic read test/#` with `pattern deny test/nosubscribe`).
    let mut anonymous = RawClient::connect(broker.addr(), &broker.id_first("anon"));
    let codes = anonymous.subscribe(
        1,
        &[
            ("public/#", 1),
            ("public/secret", 1),
            ("test/nosubscribe", 1),
            ("test/other", 1),
            ("alice/#", 1),
            ("feeds/+/#", 0),
        ],
    );
    assert_eq!(codes, [1, 0x80, 0x80, 1, 0x80, 0x80], "3.1.1 SUBACK bytes");

    // MQTT 5: 0x87 Not authorized, per filter.
    let mut v5 = V5Client::connect_user(broker.addr(), &broker.id_first("v5"), Some(ALICE));
    let codes = v5.subscribe_qos1(&["alice/+/x", "test/nosubscribe", "#", "shared/#"]);
    assert_eq!(
        codes,
        [
            V5SubscribeReasonCode::Success(V5QoS::AtLeastOnce),
            V5SubscribeReasonCode::NotAuthorized,
            V5SubscribeReasonCode::NotAuthorized,
            V5SubscribeReasonCode::Success(V5QoS::AtLeastOnce),
        ]
    );

    // mosquitto_sub, as interoperability suites check test/nosubscribe.
    let line = mosquitto_suback(broker.port(), "test/nosubscribe", &[]);
    assert!(line.ends_with(": 128"), "{line}");
    let line = mosquitto_suback(broker.port(), "test/nosubscribe", &["-V", "5"]);
    assert!(line.ends_with(": 135"), "{line}");
    let line = mosquitto_suback(broker.port(), "test/#", &["-V", "5"]);
    assert!(line.ends_with(": 1"), "{line}");
}

#[test]
fn acl_subscribe_refused_with_0x80_and_0x87_one_shard() {
    check_subscribe(1);
}

#[test]
fn acl_subscribe_refused_with_0x80_and_0x87_four_shards() {
    check_subscribe(4);
}

// ---------------------------------------------------------------------------------------------
// PUBLISH
// ---------------------------------------------------------------------------------------------

fn check_publish(shards: usize) {
    let broker = AclBroker::start(shards);
    let mut reader = broker.client(&broker.id_first("reader"), None);
    assert_eq!(
        reader.subscribe("public/#", QoS::AtLeastOnce),
        Some(QoS::AtLeastOnce)
    );

    // 3.1.1: bob may not write public/news. Dropped, yet acknowledged at every QoS (PUBACK,
    // PUBREC then PUBCOMP), as mosquitto does: 3.1.1 has no code to refuse a PUBLISH.
    let mut bob = broker.client(&broker.id_last("bob"), Some(BOB));
    bob.publish_acked("public/news", QoS::AtMostOnce, false, "bob-0");
    bob.publish_acked("public/news", QoS::AtLeastOnce, false, "bob-1");
    bob.publish_acked("public/news", QoS::ExactlyOnce, false, "bob-2");
    bob.publish_acked("public/news", QoS::AtLeastOnce, true, "bob-retained");
    let mut alice = broker.client(&broker.id_last("alice"), Some(ALICE));
    alice.publish_acked("public/news", QoS::AtLeastOnce, false, "alice-1");
    let got = reader.recv_publish();
    assert_eq!(payload_of(&got), "alice-1", "bob's were dropped: {got:?}");
    reader.expect_no_publish();

    // MQTT 5: PUBACK / PUBREC 0x87; QoS 0 dropped, the connection kept.
    let mut bob5 = V5Client::connect_user(broker.addr(), &broker.id_last("bob5"), Some(BOB));
    let ack = bob5.publish_answered("public/news", V5QoS::AtLeastOnce, "bob5-1");
    assert_eq!((ack.first_byte, ack.reason_code()), (0x40, 0x87), "{ack:?}");
    let ack = bob5.publish_answered("public/news", V5QoS::ExactlyOnce, "bob5-2");
    assert_eq!((ack.first_byte, ack.reason_code()), (0x50, 0x87), "{ack:?}");
    bob5.publish_qos0("public/news", "bob5-0");
    bob5.assert_alive();
    // bob may write feeds/#: nobody reads it, which is 0x10, not a refusal.
    let ack = bob5.publish_answered("feeds/x", V5QoS::AtLeastOnce, "to-nobody");
    assert_eq!(ack.reason_code(), 0x10, "{ack:?}");
    let mut alice5 = V5Client::connect_user(broker.addr(), &broker.id_last("alice5"), Some(ALICE));
    let ack = alice5.publish_answered("public/news", V5QoS::AtLeastOnce, "alice5-1");
    assert_eq!(ack.reason_code(), 0x00, "{ack:?}");
    assert_eq!(payload_of(&reader.recv_publish()), "alice5-1");
    reader.expect_no_publish();

    // mosquitto_pub, both versions.
    for version in ["311", "5"] {
        for (user, password) in [BOB, ALICE] {
            let message = format!("mosquitto-{user}-{version}");
            mosquitto_pub(
                broker.port(),
                &[
                    "-V",
                    version,
                    "-u",
                    user,
                    "-P",
                    password,
                    "-q",
                    "1",
                    "-t",
                    "public/news",
                    "-m",
                    &message,
                ],
            );
        }
        let got = reader.recv_publish();
        assert_eq!(payload_of(&got), format!("mosquitto-alice-{version}"));
    }
    reader.expect_no_publish();
    // Nothing bob sent was retained.
    let mut late = broker.client(&broker.id_first("late"), None);
    late.subscribe("public/#", QoS::AtLeastOnce);
    late.expect_no_publish();
}

#[test]
fn acl_publish_refused_one_shard() {
    check_publish(1);
}

#[test]
fn acl_publish_refused_four_shards() {
    check_publish(4);
}

// ---------------------------------------------------------------------------------------------
// Delivery: wildcards and retained messages
// ---------------------------------------------------------------------------------------------

fn check_delivery(shards: usize) {
    let broker = AclBroker::start(shards);
    // alice may write all of public/#; anonymous clients may read it but public/secret.
    let mut alice = broker.client(&broker.id_last("alice"), Some(ALICE));
    alice.publish_acked("public/secret", QoS::AtLeastOnce, true, "retained-secret");
    alice.publish_acked("public/news", QoS::AtLeastOnce, true, "retained-news");

    // Retained messages on SUBSCRIBE: the unreadable one is not sent.
    let mut reader = broker.client(&broker.id_first("reader"), None);
    assert_eq!(
        reader.subscribe("public/#", QoS::AtLeastOnce),
        Some(QoS::AtLeastOnce)
    );
    let got = reader.recv_publish();
    assert_eq!(
        (topic_of(&got), payload_of(&got)),
        ("public/news".into(), "retained-news".into())
    );
    reader.expect_no_publish();
    let mut reader5 = V5Client::connect_user(broker.addr(), &broker.id_first("reader5"), None);
    reader5.subscribe_qos1(&["public/+"]);
    assert_eq!(
        reader5.try_read_publish(WAIT),
        Some(("public/news".into(), "retained-news".into()))
    );
    assert_eq!(reader5.try_read_publish(QUIET), None);

    // Live: the wildcard subscription matches public/secret, the ACL keeps it away.
    alice.publish_acked("public/secret", QoS::AtLeastOnce, false, "live-secret");
    alice.publish_acked("public/news", QoS::ExactlyOnce, false, "live-news");
    let got = reader.recv_publish();
    assert_eq!(
        (topic_of(&got), payload_of(&got)),
        ("public/news".into(), "live-news".into())
    );
    reader.expect_no_publish();
    assert_eq!(
        reader5.try_read_publish(WAIT),
        Some(("public/news".into(), "live-news".into()))
    );
    assert_eq!(reader5.try_read_publish(QUIET), None);
    // alice herself, subscribed to alice/#, does not get alice/private/... (denied).
    let mut own = broker.client(&broker.id_first("alice-own"), Some(ALICE));
    own.subscribe("alice/#", QoS::AtLeastOnce);
    alice.publish_acked("alice/private/diary", QoS::AtLeastOnce, false, "no");
    alice.publish_acked("alice/notes", QoS::AtLeastOnce, false, "yes");
    assert_eq!(payload_of(&own.recv_publish()), "yes");
    own.expect_no_publish();

    // mosquitto_sub reading public/#: the retained news, not the retained secret; then a
    // live message as the end mark (so it exits at once).
    let sub = mosquitto_sub(broker.port(), "public/#", 1, 2, &[]);
    alice.publish_acked("public/secret", QoS::AtLeastOnce, false, "live-secret");
    alice.publish_acked("public/end", QoS::AtLeastOnce, false, "end");
    let messages = sub_messages(&sub.finish());
    assert_eq!(
        messages,
        [
            ("public/news".into(), 1, true, "retained-news".into()),
            ("public/end".into(), 1, false, "end".into())
        ],
        "never the secret"
    );
}

#[test]
fn acl_delivery_and_retained_respect_read_access_one_shard() {
    check_delivery(1);
}

#[test]
fn acl_delivery_and_retained_respect_read_access_four_shards() {
    check_delivery(4);
}

// ---------------------------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------------------------

fn check_patterns(shards: usize) {
    let broker = AclBroker::start(shards);
    // %c: each client its own devices/<client id>/#, anonymous or not.
    let (id1, id2) = (broker.id_first("dev"), broker.id_last("dev"));
    let mut dev1 = broker.client(&id1, None);
    let mut dev2 = broker.client(&id2, Some(BOB));
    let own1 = format!("devices/{id1}/#");
    let own2 = format!("devices/{id2}/#");
    assert_eq!(
        dev1.subscribe_many(&[
            (own1.as_str(), QoS::AtLeastOnce),
            ("devices/#", QoS::AtLeastOnce),
            (own2.as_str(), QoS::AtLeastOnce),
        ]),
        [Some(QoS::AtLeastOnce), None, None]
    );
    assert_eq!(
        dev2.subscribe(&own2, QoS::AtLeastOnce),
        Some(QoS::AtLeastOnce)
    );
    // dev1 may not write into dev2's devices; its own it may, and reads back.
    dev1.publish_acked(&format!("devices/{id2}/cmd"), QoS::AtLeastOnce, false, "x");
    dev1.publish_acked(
        &format!("devices/{id1}/state"),
        QoS::AtLeastOnce,
        false,
        "1",
    );
    assert_eq!(payload_of(&dev1.recv_publish()), "1");
    dev2.expect_no_publish();
    dev2.publish_acked(
        &format!("devices/{id2}/state"),
        QoS::AtLeastOnce,
        false,
        "2",
    );
    assert_eq!(payload_of(&dev2.recv_publish()), "2");
    dev1.expect_no_publish();

    // %u: alice reads feeds/alice/#, which bob may write; bob reads his own feed only, and an
    // anonymous client has no feed.
    let mut alice = broker.client(&broker.id_first("alice"), Some(ALICE));
    assert_eq!(
        alice.subscribe_many(&[
            ("feeds/alice/#", QoS::AtLeastOnce),
            ("feeds/bob/#", QoS::AtLeastOnce),
        ]),
        [Some(QoS::AtLeastOnce), None]
    );
    let mut bob = broker.client(&broker.id_last("bob"), Some(BOB));
    bob.publish_acked("feeds/alice/news", QoS::AtLeastOnce, false, "for-alice");
    assert_eq!(payload_of(&alice.recv_publish()), "for-alice");
    let mut bob5 = V5Client::connect_user(broker.addr(), &broker.id_last("bob5"), Some(BOB));
    assert_eq!(
        bob5.subscribe_qos1(&["feeds/bob/#", "feeds/alice/#"]),
        [
            V5SubscribeReasonCode::Success(V5QoS::AtLeastOnce),
            V5SubscribeReasonCode::NotAuthorized
        ]
    );
}

#[test]
fn acl_patterns_substitute_client_id_and_username_one_shard() {
    check_patterns(1);
}

#[test]
fn acl_patterns_substitute_client_id_and_username_four_shards() {
    check_patterns(4);
}

// ---------------------------------------------------------------------------------------------
// Wills
// ---------------------------------------------------------------------------------------------

fn will_connect(id: &str, user: Option<(&str, &str)>, topic: &str) -> Connect {
    let mut connect = Connect::v311(id);
    connect.will = Some(Will {
        topic: topic.into(),
        payload: b"gone".to_vec(),
        qos: 1,
        retain: false,
    });
    if let Some((username, password)) = user {
        connect.username = Some(username.into());
        connect.password = Some(password.as_bytes().to_vec());
    }
    connect
}

fn check_will(shards: usize) {
    let broker = AclBroker::start(shards);
    // A will the client may not write is refused with the CONNECT: 3.1.1 return code 5 ...
    for (user, topic) in [
        (Some(ALICE), "feeds/x"),
        (Some(BOB), "will/alice"),
        (None, "will/x"),
    ] {
        let connect = will_connect(&broker.id_last("will"), user, topic);
        let mut raw = RawClient::open(broker.addr());
        raw.send(&connect.bytes());
        assert_eq!(raw.read_packet().connack(), (false, 5), "{user:?} {topic}");
        raw.expect_closed();
    }
    // ... MQTT 5 CONNACK 0x87.
    let will = LastWill::new("alice/private/x", "gone", V5QoS::AtLeastOnce, false, None);
    let (_, connack) = V5Client::connect_as(
        broker.addr(),
        &broker.id_last("will5"),
        Some(ALICE),
        Some(will),
    );
    assert_eq!(connack.reason_code(), 0x87, "{connack:?}");

    // A will it may write is accepted, and published when the connection drops, to a reader
    // on another shard.
    let mut reader = broker.client(&broker.id_first("reader"), None);
    reader.subscribe("will/#", QoS::AtLeastOnce);
    let connect = will_connect(&broker.id_last("will"), Some(ALICE), "will/alice");
    let mut raw = RawClient::open(broker.addr());
    raw.send(&connect.bytes());
    assert_eq!(raw.read_packet().connack(), (false, 0));
    drop(raw);
    let got = reader.recv_publish();
    assert_eq!(
        (topic_of(&got), payload_of(&got)),
        ("will/alice".into(), "gone".into())
    );
    let will = LastWill::new("will/alice", "gone5", V5QoS::AtLeastOnce, false, None);
    let (alice5, connack) = V5Client::connect_as(
        broker.addr(),
        &broker.id_last("will5"),
        Some(ALICE),
        Some(will),
    );
    assert_eq!(connack.reason_code(), 0, "{connack:?}");
    drop(alice5);
    assert_eq!(payload_of(&reader.recv_publish()), "gone5");
}

#[test]
fn acl_will_must_be_writable_one_shard() {
    check_will(1);
}

#[test]
fn acl_will_must_be_writable_four_shards() {
    check_will(4);
}

// ---------------------------------------------------------------------------------------------
// The binary: SIGHUP reload, malformed files
// ---------------------------------------------------------------------------------------------

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// The CONNACK return code for a 3.1.1 CONNECT with this user.
fn connack_code(addr: SocketAddr, user: (&str, &str)) -> u8 {
    let mut connect = Connect::v311(&unique_id("login"));
    connect.username = Some(user.0.into());
    connect.password = Some(user.1.as_bytes().to_vec());
    let mut client = RawClient::open(addr);
    client.send(&connect.bytes());
    client.read_packet().connack().1
}

#[test]
fn sighup_reloads_password_and_acl_files_keeping_connections() {
    let dir = TempDir::new("acl-reload");
    let passwd = password_file(&dir, &[ALICE]);
    let acl = dir.path().join("acl");
    write(&acl, "topic readwrite a/#\n");
    let shards = 2;
    let mut ringmq = Ringmq::start(&[
        "--shards",
        &shards.to_string(),
        "--password-file",
        passwd.to_str().unwrap(),
        "--acl-file",
        acl.to_str().unwrap(),
    ]);
    let addr = ringmq.addr;
    let options = |id: &str| mqtt_options_with_id(addr, id);
    let mut kept = MqttClient::connect(options(&unique_id_on(0, shards, "kept")));
    assert_eq!(
        kept.subscribe("a/#", QoS::AtLeastOnce),
        Some(QoS::AtLeastOnce)
    );
    assert_eq!(kept.subscribe("b/#", QoS::AtLeastOnce), None);
    let carol = ("carol", "carol-pw");
    assert_eq!(
        connack_code(addr, carol),
        4,
        "carol is not in the password file yet"
    );

    // New files: anonymous clients move from a/# to b/#, carol appears with a/#.
    let new_dir = TempDir::new("acl-reload-passwd");
    let new_passwd = password_file(&new_dir, &[ALICE, carol]);
    std::fs::copy(&new_passwd, &passwd).unwrap();
    write(
        &acl,
        "topic readwrite b/#\nuser carol\ntopic readwrite a/#\n",
    );
    let line = ringmq.reload();
    assert!(line.contains("reloaded"), "{line}");
    assert!(line.contains("2 users"), "{line}");

    // The connection stayed, and its next operations meet the new rules.
    assert_eq!(
        kept.subscribe("b/#", QoS::AtLeastOnce),
        Some(QoS::AtLeastOnce)
    );
    assert_eq!(kept.subscribe("a/x", QoS::AtLeastOnce), None);
    let mut other = MqttClient::connect(options(&unique_id_on(1, shards, "other")));
    other.publish_acked("a/1", QoS::AtLeastOnce, false, "a-dropped");
    other.publish_acked("b/1", QoS::AtLeastOnce, false, "b-delivered");
    assert_eq!(payload_of(&kept.recv_publish()), "b-delivered");
    // carol may log in now and write a/#; `kept` still holds its a/# subscription but may no
    // longer read it, on either shard.
    assert_eq!(connack_code(addr, carol), 0);
    let mut carol_options = options(&unique_id_on(1, shards, "carol"));
    carol_options.set_credentials(carol.0, carol.1);
    let mut carol_client = MqttClient::connect(carol_options);
    carol_client.subscribe("a/#", QoS::AtLeastOnce);
    carol_client.publish_acked("a/2", QoS::AtLeastOnce, false, "carol");
    assert_eq!(payload_of(&carol_client.recv_publish()), "carol");
    kept.expect_no_publish();

    // A malformed reload changes nothing, names the line, and the broker goes on.
    write(&acl, "topic readwrite c/#\ntopic reed d/#\n");
    let line = ringmq.reload();
    assert!(line.contains("reload failed"), "{line}");
    assert!(line.contains("line 2"), "{line}");
    assert_eq!(
        kept.subscribe("b/x", QoS::AtLeastOnce),
        Some(QoS::AtLeastOnce)
    );
    assert_eq!(kept.subscribe("c/x", QoS::AtLeastOnce), None);
    assert_eq!(connack_code(addr, carol), 0);
    std::fs::remove_file(&passwd).unwrap();
    let line = ringmq.reload();
    assert!(
        line.contains("reload failed") && line.contains("passwd"),
        "{line}"
    );
    assert_eq!(connack_code(addr, carol), 0, "the old password file stays");
    kept.ping();

    ringmq.signal(libc::SIGTERM);
    let deadline = Instant::now() + WAIT;
    while ringmq.try_wait().is_none() {
        assert!(Instant::now() < deadline, "ringmq ignored SIGTERM");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn malformed_acl_file_is_refused_at_start_naming_the_line() {
    let dir = TempDir::new("acl-bad");
    let acl: PathBuf = dir.path().join("acl");
    write(&acl, "# fine\ntopic read a/#\nuser\n");
    let (status, stderr) = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--acl-file",
        acl.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(stderr.contains("line 3:"), "{stderr}");
    assert!(stderr.contains(acl.to_str().unwrap()), "{stderr}");
    // The library says the same to an embedder.
    let mut config = test_config();
    config.acl_file = Some(acl.clone());
    write(&acl, "topic read a/#/b\n");
    let error = ringmq::broker::Broker::start(config)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("line 1:"), "{error}");
}
