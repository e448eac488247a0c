//! Listeners and TLS (issue 9 items 1 and 2): a plain and an `mqtt+tls` listener side by side,
//! judged through mosquitto_pub/sub (`--cafile`, `--cert`/`--key`, 3.1.1 and `-V 5`), a
//! rustls client speaking hand-written MQTT bytes, and raw TCP for what no TLS client sends.
//! The CA, server and client certificates are made at test time with rcgen. Each test runs
//! on 1 and 2 shards (a TLS connection accepted on one shard and homed on the other is handed
//! over with its TLS state).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{make_ca, server_cert};
use common::*;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use ringmq::config::{Config, ListenerConfig, ListenerProtocol};

/// A test PKI in a temp dir: a CA, a server certificate for 127.0.0.1 and localhost, a client
/// certificate with CN `client_cn`, and a second CA that signed nothing of ours.
struct Pki {
    dir: TempDir,
    client_cn: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("tls");
        let client_cn = unique_id("sensor");
        let (ca, ca_key) = make_ca("ringmq test CA");
        let (server, server_key) = server_cert(&ca, &ca_key);
        let client_key = KeyPair::generate().expect("key");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client
            .distinguished_name
            .push(DnType::CommonName, client_cn.as_str());
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client
            .signed_by(&client_key, &ca, &ca_key)
            .expect("client cert");
        let (other_ca, _) = make_ca("some other CA");
        let write = |name: &str, pem: String| {
            std::fs::write(dir.path().join(name), pem).expect("write pem");
        };
        write("ca.pem", ca.pem());
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        write("client.pem", client.pem());
        write("client.key", client_key.serialize_pem());
        write("other-ca.pem", other_ca.pem());
        Pki { dir, client_cn }
    }

    fn path(&self, name: &str) -> String {
        self.dir
            .path()
            .join(name)
            .to_str()
            .expect("utf-8")
            .to_string()
    }

    /// An `mqtt+tls` listener on an ephemeral port with the server certificate.
    fn listener(&self) -> ListenerConfig {
        ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::MqttTls,
            certfile: Some(PathBuf::from(self.path("server.pem"))),
            keyfile: Some(PathBuf::from(self.path("server.key"))),
            ..ListenerConfig::default()
        }
    }

    /// The listener above, requiring a client certificate from our CA.
    fn listener_requiring_certificate(&self) -> ListenerConfig {
        ListenerConfig {
            cafile: Some(PathBuf::from(self.path("ca.pem"))),
            require_certificate: true,
            ..self.listener()
        }
    }
}

/// A broker on `shards` shards with the plain `listen` listener first and `tls` second.
struct Brokers {
    broker: TestBroker,
    plain: SocketAddr,
    tls: SocketAddr,
}

fn start(shards: usize, tls: ListenerConfig, tweak: impl FnOnce(&mut Config)) -> Brokers {
    let mut config = test_config();
    config.shards = shards;
    config.listener = vec![tls];
    tweak(&mut config);
    let broker = Broker::start(config).unwrap_or_else(|e| panic!("Broker::start: {e}"));
    let addrs = broker.listener_addrs().to_vec();
    assert_eq!(addrs.len(), 2, "listen and one [[listener]]");
    Brokers {
        broker: TestBroker::wrap(broker),
        plain: addrs[0],
        tls: addrs[1],
    }
}

use ringmq::broker::Broker;

/// mosquitto_sub on the TLS port with `extra` (certificates, `-V 5`, ...), ready.
fn tls_sub(port: u16, topic: &str, count: usize, extra: &[&str]) -> Proc {
    mosquitto_sub(port, topic, 1, count, extra)
}

fn ca_args(pki: &Pki) -> Vec<String> {
    strings(&["--cafile", &pki.path("ca.pem")])
}

fn client_cert_args(pki: &Pki) -> Vec<String> {
    let mut args = ca_args(pki);
    args.extend(strings(&[
        "--cert",
        &pki.path("client.pem"),
        "--key",
        &pki.path("client.key"),
    ]));
    args
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn assert_delivered(sub: Proc, topic: &str, payloads: &[&str]) {
    let finished = sub.finish();
    let got: Vec<String> = sub_messages(&finished)
        .into_iter()
        .map(|(t, _, _, payload)| {
            assert_eq!(t, topic);
            payload
        })
        .collect();
    assert_eq!(got, payloads, "stderr: {}", finished.stderr);
}

fn round_trip_over_tls(shards: usize, version: &str) {
    let pki = Pki::new();
    let b = start(shards, pki.listener(), |_| {});
    let port = b.tls.port();
    let topic = unique_topic("tls/rt");
    let mut sub_args = ca_args(&pki);
    sub_args.extend(strings(&["-V", version]));
    let sub = tls_sub(port, &topic, 2, &refs(&sub_args));
    for payload in ["one", "two"] {
        let mut args = sub_args.clone();
        args.extend(strings(&["-t", &topic, "-q", "1", "-m", payload]));
        let finished = mosquitto_pub(port, &refs(&args));
        assert!(finished.status.success(), "pub: {}", finished.stderr);
    }
    assert_delivered(sub, &topic, &["one", "two"]);
    drop(b.broker);
}

#[test]
fn mosquitto_clients_round_trip_over_tls_3_1_1_and_5_on_1_shard() {
    round_trip_over_tls(1, "mqttv311");
    round_trip_over_tls(1, "5");
}

#[test]
fn mosquitto_clients_round_trip_over_tls_3_1_1_and_5_on_2_shards() {
    round_trip_over_tls(2, "mqttv311");
    round_trip_over_tls(2, "5");
}

fn plain_and_tls_clients_exchange(shards: usize) {
    let pki = Pki::new();
    let b = start(shards, pki.listener(), |_| {});
    let topic = unique_topic("tls/mixed");
    // TLS subscriber, plain publisher.
    let sub = tls_sub(b.tls.port(), &topic, 1, &refs(&ca_args(&pki)));
    let finished = mosquitto_pub(b.plain.port(), &["-t", &topic, "-q", "1", "-m", "in-clear"]);
    assert!(finished.status.success(), "pub: {}", finished.stderr);
    assert_delivered(sub, &topic, &["in-clear"]);
    // Plain subscriber, TLS publisher (MQTT 5).
    let sub = mosquitto_sub(b.plain.port(), &topic, 1, 1, &["-V", "5"]);
    let mut args = ca_args(&pki);
    args.extend(strings(&[
        "-V", "5", "-t", &topic, "-q", "1", "-m", "sealed",
    ]));
    let finished = mosquitto_pub(b.tls.port(), &refs(&args));
    assert!(finished.status.success(), "pub: {}", finished.stderr);
    assert_delivered(sub, &topic, &["sealed"]);
}

#[test]
fn plain_and_tls_clients_exchange_messages_on_1_and_2_shards() {
    plain_and_tls_clients_exchange(1);
    plain_and_tls_clients_exchange(2);
}

#[test]
fn a_client_trusting_another_ca_is_refused_by_its_own_check() {
    let pki = Pki::new();
    let b = start(1, pki.listener(), |_| {});
    let topic = unique_topic("tls/badca");
    let finished = mosquitto_pub(
        b.tls.port(),
        &[
            "--cafile",
            &pki.path("other-ca.pem"),
            "-t",
            &topic,
            "-m",
            "x",
        ],
    );
    assert!(
        !finished.status.success(),
        "a server certificate from another CA must not verify"
    );
    // The broker is none the worse: the right CA still works.
    let mut args = ca_args(&pki);
    args.extend(strings(&["-t", &topic, "-m", "x"]));
    let finished = mosquitto_pub(b.tls.port(), &refs(&args));
    assert!(finished.status.success(), "pub: {}", finished.stderr);
}

fn require_certificate(shards: usize) {
    let pki = Pki::new();
    let b = start(shards, pki.listener_requiring_certificate(), |_| {});
    let port = b.tls.port();
    let topic = unique_topic("tls/cert");
    let mut without = ca_args(&pki);
    without.extend(strings(&["-t", &topic, "-m", "no-cert"]));
    let finished = mosquitto_pub(port, &refs(&without));
    assert!(
        !finished.status.success(),
        "require_certificate: a client without a certificate is refused"
    );
    let sub = tls_sub(port, &topic, 1, &refs(&client_cert_args(&pki)));
    let mut with = client_cert_args(&pki);
    with.extend(strings(&["-t", &topic, "-q", "1", "-m", "with-cert"]));
    let finished = mosquitto_pub(port, &refs(&with));
    assert!(finished.status.success(), "pub: {}", finished.stderr);
    assert_delivered(sub, &topic, &["with-cert"]);
}

#[test]
fn require_certificate_refuses_a_client_without_one_and_accepts_one_with() {
    require_certificate(1);
    require_certificate(2);
}

/// A TLS client from rustls (not ringmq's code) over a plain TcpStream, for hand-written MQTT
/// bytes: trusts `ca.pem`, presents the client certificate when `with_cert`.
fn rustls_client(
    pki: &Pki,
    addr: SocketAddr,
    with_cert: bool,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    for cert in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if with_cert {
        let chain = std::fs::read(pki.path("client.pem")).unwrap();
        let chain = rustls_pemfile::certs(&mut &chain[..])
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = std::fs::read(pki.path("client.key")).unwrap();
        let key = rustls_pemfile::private_key(&mut &key[..]).unwrap().unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let mut config = config;
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    rustls::StreamOwned::new(conn, stream)
}

/// Sends a 3.1.1 CONNECT (with `username`/`password` if given) and returns the CONNACK's
/// return code, or `None` when the connection ends first.
fn connack_code<S: Read + Write>(
    stream: &mut S,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Option<u8> {
    let mut connect = Connect::v311(client_id);
    if let Some((username, password)) = login {
        connect.username = Some(username.into());
        connect.password = Some(password.as_bytes().to_vec());
    }
    stream.write_all(&connect.bytes()).ok()?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).ok()?;
    assert_eq!(connack[..2], [0x20, 0x02], "CONNACK");
    Some(connack[3])
}

fn use_identity_as_username(shards: usize) {
    let pki = Pki::new();
    let dir = TempDir::new("tls-passwd");
    let listener = ListenerConfig {
        use_identity_as_username: true,
        ..pki.listener_requiring_certificate()
    };
    let passwd = password_file(&dir, &[("alice", "secret")]);
    let b = start(shards, listener, |config| {
        config.allow_anonymous = false;
        config.password_file = Some(passwd);
    });
    // On the plain listener, no login and a wrong one are refused [MQTT-3.1.4-2 ...]: 5, 4.
    let id = unique_id("cn");
    let mut plain = RawClient::open(b.plain);
    plain.send(&Connect::v311(&id).bytes());
    assert_eq!(plain.read_packet().connack().1, 5, "anonymous, refused");
    // Over TLS with the client certificate, the CN is the username: accepted with no login,
    // and a username/password the file does not know is ignored (as mosquitto does).
    let mut tls = rustls_client(&pki, b.tls, true);
    assert_eq!(connack_code(&mut tls, &id, None), Some(0), "CN as username");
    let mut tls = rustls_client(&pki, b.tls, true);
    let id2 = unique_id("cn");
    assert_eq!(
        connack_code(&mut tls, &id2, Some(("mallory", "wrong"))),
        Some(0),
        "the certificate's identity, not the CONNECT's username"
    );
    // And mosquitto clients see the same: a round trip with the certificate and no login.
    let topic = unique_topic("tls/identity");
    let sub = tls_sub(b.tls.port(), &topic, 1, &refs(&client_cert_args(&pki)));
    let mut args = client_cert_args(&pki);
    args.extend(strings(&[
        "-V",
        "5",
        "-t",
        &topic,
        "-q",
        "1",
        "-m",
        &pki.client_cn,
    ]));
    let finished = mosquitto_pub(b.tls.port(), &refs(&args));
    assert!(finished.status.success(), "pub: {}", finished.stderr);
    assert_delivered(sub, &topic, &[pki.client_cn.as_str()]);
}

#[test]
fn use_identity_as_username_lets_the_certificate_log_in_with_allow_anonymous_false() {
    use_identity_as_username(1);
    use_identity_as_username(2);
}

#[test]
fn rustls_client_speaks_mqtt_over_tls_with_alpn_and_the_server_answers_pingreq() {
    let pki = Pki::new();
    let b = start(1, pki.listener(), |_| {});
    let mut tls = rustls_client(&pki, b.tls, false);
    assert_eq!(connack_code(&mut tls, &unique_id("alpn"), None), Some(0));
    assert_eq!(
        tls.conn.alpn_protocol(),
        Some(&b"mqtt"[..]),
        "ALPN mqtt negotiated"
    );
    tls.write_all(&PINGREQ).unwrap();
    let mut pong = [0u8; 2];
    tls.read_exact(&mut pong).unwrap();
    assert_eq!(pong, PINGRESP);
}

fn garbage_closes_only_that_connection(shards: usize) {
    let pki = Pki::new();
    let b = start(shards, pki.listener(), |config| {
        config.limits.connect_timeout_secs = 2;
    });
    let topic = unique_topic("tls/garbage");
    let sub = tls_sub(b.tls.port(), &topic, 1, &refs(&ca_args(&pki)));
    // Not a TLS record at all, and a record header announcing a handshake that is garbage.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        &[
            0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0,
        ][..],
    ] {
        let mut raw = RawClient::open(b.tls);
        raw.send_ignoring_errors(junk);
        let answer = raw.expect_closed();
        // At most a TLS alert (content type 21), never MQTT.
        assert!(
            answer.is_empty() || answer[0] == 0x15,
            "answered {answer:02x?}"
        );
    }
    // A client that stalls mid-handshake: half a ClientHello, then nothing. The connect
    // deadline closes it.
    let mut stalled = RawClient::open(b.tls);
    stalled.send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
    let started = Instant::now();
    stalled.expect_closed_within(Duration::from_secs(5));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed by the deadline"
    );
    // The TLS subscriber and the plain listener are none the worse.
    let finished = mosquitto_pub(b.plain.port(), &["-t", &topic, "-q", "1", "-m", "still"]);
    assert!(finished.status.success(), "pub: {}", finished.stderr);
    assert_delivered(sub, &topic, &["still"]);
    assert_broker_still_serves(b.plain);
    assert!(b.broker.wait_counter("tls_errors", |s| s.tls_errors, 3) >= 3);
}

#[test]
fn malformed_tls_and_a_stalled_handshake_close_only_that_connection_on_1_and_2_shards() {
    garbage_closes_only_that_connection(1);
    garbage_closes_only_that_connection(2);
}

#[test]
fn tls_clients_homed_on_the_other_shard_are_handed_over_with_their_tls_state() {
    let pki = Pki::new();
    let b = start(2, pki.listener(), |_| {});
    let port = b.tls.port();
    let topic = unique_topic("tls/handoff");
    // Subscribers homed on each shard; whichever shard accepts them, about half cross.
    let subs: Vec<(String, Proc)> = (0..6)
        .map(|k| {
            let id = unique_id_on(k % 2, 2, "tls-home");
            let mut args = ca_args(&pki);
            args.extend(strings(&["-i", &id]));
            if k % 3 == 0 {
                args.extend(strings(&["-V", "5"]));
            }
            (id, tls_sub(port, &topic, 1, &refs(&args)))
        })
        .collect();
    let mut args = ca_args(&pki);
    args.extend(strings(&["-i", &unique_id_on(1, 2, "tls-pub")]));
    args.extend(strings(&["-t", &topic, "-q", "1", "-m", "crossed"]));
    let finished = mosquitto_pub(port, &refs(&args));
    assert!(finished.status.success(), "pub: {}", finished.stderr);
    for (_, sub) in subs {
        assert_delivered(sub, &topic, &["crossed"]);
    }
    // More TLS connections until one was handed over (each crosses with probability 1/2).
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let handed: u64 = b.broker.stats().iter().map(|s| s.handoffs_in).sum();
        if handed > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no TLS connection was handed over"
        );
        let mut tls = rustls_client(&pki, b.tls, false);
        assert_eq!(
            connack_code(&mut tls, &unique_id_on(0, 2, "tls-x"), None),
            Some(0)
        );
        tls.write_all(&PINGREQ).unwrap();
        let mut pong = [0u8; 2];
        tls.read_exact(&mut pong).unwrap();
        assert_eq!(pong, PINGRESP, "answered from the home shard");
        std::thread::sleep(Duration::from_millis(1100));
    }
}

#[test]
fn a_listener_at_its_connections_max_closes_new_connections_at_accept() {
    let pki = Pki::new();
    let listener = ListenerConfig {
        connections_max: 2,
        ..pki.listener()
    };
    let b = start(1, listener, |_| {});
    let first = rustls_client(&pki, b.tls, false);
    let second = RawClient::open(b.tls);
    // Both are counted from their accept; the broker saw them once the first handshakes.
    let mut first = first;
    assert_eq!(connack_code(&mut first, &unique_id("max"), None), Some(0));
    let mut third = RawClient::open(b.tls);
    third.expect_closed_silently();
    // The plain listener has no such limit.
    assert_broker_still_serves(b.plain);
    drop(second);
    drop(first);
    // Once one leaves, a new one gets in.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut tls = rustls_client(&pki, b.tls, false);
        if connack_code(&mut tls, &unique_id("max"), None) == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "the slots were never given back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_wss_listener_without_certificate_files_is_refused_with_a_clear_error() {
    // WebSocket listeners themselves: tests/websocket.rs.
    let text = "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"wss\"\n";
    let error = Config::from_toml(text).expect_err("wss without certfile");
    assert!(error.contains("certfile and keyfile"), "{error}");
    let text = "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"ws\"\n";
    assert!(Config::from_toml(text).is_ok());
}

#[test]
fn reload_tls_swaps_the_certificate_for_new_connections_and_keeps_old_ones() {
    let pki = Pki::new();
    let b = start(2, pki.listener(), |_| {});
    let broker = b.broker.ringmq().expect("ringmq");
    let mut kept = rustls_client(&pki, b.tls, false);
    assert_eq!(connack_code(&mut kept, &unique_id("kept"), None), Some(0));
    // A new CA and server certificate replace the files in place.
    let next = Pki::new();
    for name in ["server.pem", "server.key"] {
        std::fs::copy(next.path(name), pki.path(name)).expect("copy");
    }
    broker.reload_tls().expect("reload");
    let topic = unique_topic("tls/reload");
    let publish =
        |ca: &str| mosquitto_pub(b.tls.port(), &["--cafile", ca, "-t", &topic, "-m", "x"]);
    assert!(
        publish(&next.path("ca.pem")).status.success(),
        "the new chain"
    );
    assert!(
        !publish(&pki.path("ca.pem")).status.success(),
        "not the old one"
    );
    // The connection made before keeps its session.
    kept.write_all(&PINGREQ).unwrap();
    let mut pong = [0u8; 2];
    kept.read_exact(&mut pong).unwrap();
    assert_eq!(pong, PINGRESP);
    // A broken key file is refused by name, and the listener keeps what it had.
    std::fs::write(pki.path("server.key"), "not a key").unwrap();
    let error = broker.reload_tls().expect_err("a broken key");
    assert!(error.contains("server.key"), "{error}");
    assert!(
        publish(&next.path("ca.pem")).status.success(),
        "still the new chain"
    );
}

#[test]
fn a_refusing_connack_goes_out_sealed_before_the_close() {
    // [MQTT-3.2.2-5] CONNACK 5 then the close, over TLS like in the clear.
    let pki = Pki::new();
    let b = start(1, pki.listener(), |config| config.allow_anonymous = false);
    let mut tls = rustls_client(&pki, b.tls, false);
    assert_eq!(connack_code(&mut tls, &unique_id("refused"), None), Some(5));
    let mut rest = [0u8; 1];
    assert!(
        matches!(tls.read(&mut rest), Ok(0) | Err(_)),
        "closed after the CONNACK"
    );
}
