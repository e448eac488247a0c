//! WebSocket listeners (issue 9 item 3) and per-listener `allow_anonymous` (item 5): `ws` and
//! `wss` beside a plain listener, judged through clients ringmq did not write: rumqttc over
//! its WebSocket transports (3.1.1), tungstenite (a sync RFC 6455 client, over rustls for
//! `wss`) carrying hand-written MQTT 3.1.1 and 5.0 bytes, and raw TCP for the frames and
//! requests no WebSocket client sends (unmasked, oversized, text, garbage before the upgrade,
//! a wrong path). Tests that can cross shards run on 1 and 2 shards; the hand-off tests pick
//! client ids homed on the shard that did not accept them.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{make_ca, server_cert};
use common::*;
use ringmq::config::{Config, ListenerConfig, ListenerProtocol};
use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::{Message, WebSocket};

// ---------------------------------------------------------------------------------------------
// Broker and certificates
// ---------------------------------------------------------------------------------------------

/// A CA and a server certificate for 127.0.0.1 and localhost, made at test time.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("ws");
        let (ca, ca_key) = make_ca("ws test CA");
        let (server, server_key) = server_cert(&ca, &ca_key);
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A rustls client config trusting the CA, offering ALPN `http/1.1` as browsers do.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(self.path("ca.pem")).unwrap();
        for cert in rustls_pemfile::certs(&mut &ca[..]) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A broker with the plain `listen` listener, a `ws` one and (with a PKI) a `wss` one.
struct Brokers {
    broker: TestBroker,
    plain: SocketAddr,
    ws: SocketAddr,
    wss: Option<SocketAddr>,
}

fn start(shards: usize, pki: Option<&Pki>, tweak: impl FnOnce(&mut Config)) -> Brokers {
    let mut config = test_config();
    config.shards = shards;
    config.listener = vec![ListenerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        protocol: ListenerProtocol::Ws,
        ..ListenerConfig::default()
    }];
    if let Some(pki) = pki {
        config.listener.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::Wss,
            certfile: Some(pki.path("server.pem")),
            keyfile: Some(pki.path("server.key")),
            ..ListenerConfig::default()
        });
    }
    tweak(&mut config);
    let broker =
        ringmq::broker::Broker::start(config).unwrap_or_else(|e| panic!("Broker::start: {e}"));
    let addrs = broker.listener_addrs().to_vec();
    Brokers {
        broker: TestBroker::wrap(broker),
        plain: addrs[0],
        ws: addrs[1],
        wss: addrs.get(2).copied(),
    }
}

// ---------------------------------------------------------------------------------------------
// A tungstenite client carrying hand-written MQTT bytes
// ---------------------------------------------------------------------------------------------

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, WAIT).expect("TCP connect");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream
}

struct WsClient {
    ws: WebSocket<Stream>,
    inbox: Vec<u8>,
}

impl WsClient {
    /// Upgrades a connection to `addr` (over TLS with `pki`) on `path`, offering `protocol`;
    /// the subprotocol the broker chose, or the handshake's error.
    fn try_open(
        addr: SocketAddr,
        pki: Option<&Pki>,
        path: &str,
        protocol: Option<&str>,
    ) -> Result<(WsClient, Option<String>), Box<tungstenite::Error>> {
        let scheme = if pki.is_some() { "wss" } else { "ws" };
        let mut request = format!("{scheme}://127.0.0.1:{}{path}", addr.port())
            .into_client_request()
            .unwrap();
        if let Some(protocol) = protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        }
        let stream = match pki {
            None => Stream::Plain(tcp(addr)),
            Some(pki) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(pki.client_config(), name).unwrap();
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp(addr))))
            }
        };
        let (ws, response) = tungstenite::client::client(request, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => Box::new(e),
            tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
        })?;
        let chosen = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string());
        Ok((
            WsClient {
                ws,
                inbox: Vec::new(),
            },
            chosen,
        ))
    }

    fn open(addr: SocketAddr, pki: Option<&Pki>) -> WsClient {
        let (client, chosen) = WsClient::try_open(addr, pki, "/mqtt", Some("mqtt"))
            .unwrap_or_else(|e| panic!("WebSocket upgrade: {e}"));
        assert_eq!(chosen.as_deref(), Some("mqtt"), "the subprotocol chosen");
        client
    }

    /// Opens, sends `connect` (3.1.1 or 5.0 bytes) and checks the CONNACK accepts it.
    fn connect(addr: SocketAddr, pki: Option<&Pki>, connect: &[u8]) -> WsClient {
        let mut client = WsClient::open(addr, pki);
        client.send(connect);
        let connack = client.read_packet();
        assert_eq!(connack.first_byte, 0x20, "CONNACK: {connack:?}");
        assert_eq!(connack.body[1], 0, "accepted: {connack:?}");
        client
    }

    /// `bytes` in one binary frame.
    fn send(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .expect("send a binary frame");
    }

    fn send_frame(&mut self, frame: Frame) {
        self.ws.write(Message::Frame(frame)).expect("write a frame");
        self.ws.flush().expect("flush");
    }

    /// The next message that is not a binary frame (binary payload goes to the MQTT inbox).
    fn read_message(&mut self) -> Message {
        match self.ws.read() {
            Ok(message) => message,
            Err(e) => panic!("WebSocket read: {e}"),
        }
    }

    fn read_packet(&mut self) -> RawPacket {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(packet) = take_raw_packet(&mut self.inbox) {
                return packet;
            }
            assert!(Instant::now() < deadline, "no packet within {WAIT:?}");
            match self.read_message() {
                Message::Binary(bytes) => self.inbox.extend_from_slice(&bytes),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    fn ping_mqtt(&mut self) {
        self.send(&PINGREQ);
        let packet = self.read_packet();
        assert_eq!(packet.first_byte, PINGRESP[0], "PINGRESP: {packet:?}");
    }

    fn set_read_timeout(&self, timeout: Duration) {
        self.ws
            .get_ref()
            .tcp()
            .set_read_timeout(Some(timeout))
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-written MQTT 5.0 packets (3.1.1 ones come from tests/common)
// ---------------------------------------------------------------------------------------------

fn v5_connect(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_string(b"MQTT", &mut body);
    body.extend_from_slice(&[5, 0x02, 0, 60, 0]); // level 5, clean start, keepalive, no properties
    put_string(client_id.as_bytes(), &mut body);
    packet(0x10, &body)
}

fn v5_subscribe(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.push(0); // no properties
    put_string(filter.as_bytes(), &mut body);
    body.push(qos);
    packet(0x82, &body)
}

fn v5_publish(topic: &str, qos: u8, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.push(0); // no properties
    body.extend_from_slice(payload);
    packet(0x30 | qos << 1, &body)
}

/// The topic and payload of a 5.0 PUBLISH (QoS 0 or 1) read by hand.
fn v5_publish_fields(packet: &RawPacket) -> (String, Vec<u8>) {
    assert_eq!(packet.kind(), 3, "PUBLISH: {packet:?}");
    let body = &packet.body;
    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).unwrap();
    let mut at = 2 + topic_len;
    if packet.first_byte & 0x06 != 0 {
        at += 2;
    }
    let properties_len = body[at] as usize; // < 128 in these tests
    at += 1 + properties_len;
    (topic, body[at..].to_vec())
}

// ---------------------------------------------------------------------------------------------
// Raw TCP for what WebSocket clients never send
// ---------------------------------------------------------------------------------------------

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    .into_bytes()
}

/// A frame as a client sends it: masked (unless `mask` is false).
fn client_frame(first: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mask_bit = if mask { 0x80 } else { 0 };
    let mut frame = vec![first];
    match payload.len() {
        len if len < 126 => frame.push(mask_bit | len as u8),
        len if len <= 0xffff => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if mask {
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// Everything the broker sends until it closes the connection (bounded).
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "not closed within {WAIT:?}: {bytes:02x?}"
        );
        match stream.read(&mut chunk) {
            Ok(0) => return bytes,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("not closed within {WAIT:?}: {bytes:02x?}")
            }
            Err(_) => return bytes, // a reset
        }
    }
}

/// Reads the HTTP response head; returns it and whatever followed it.
fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(bytes[..end + 4].to_vec()).unwrap();
            return (head, bytes[end + 4..].to_vec());
        }
        let n = stream.read(&mut chunk).expect("an HTTP response");
        assert!(n > 0, "closed before the response ended: {bytes:02x?}");
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// A raw connection upgraded by hand: the 101 checked, frames from here on are ours to write.
fn raw_upgraded(addr: SocketAddr) -> TcpStream {
    let mut stream = tcp(addr);
    stream.write_all(&upgrade_request("/mqtt")).unwrap();
    let (head, rest) = read_response(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(rest.is_empty());
    stream
}

/// After a broken frame rule: the broker's last bytes are a close frame with `code`, then
/// the end of the stream [RFC 6455 7.1.7].
fn assert_closed_with(stream: &mut TcpStream, code: u16) {
    let bytes = read_to_close(stream);
    let close = [0x88, 2, (code >> 8) as u8, code as u8];
    assert!(
        bytes.ends_with(&close),
        "expected close {code}, got {bytes:02x?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

fn rumqttc_options(url: String, port: u16, prefix: &str, transport: Transport) -> MqttOptions {
    let mut options = MqttOptions::new(unique_id(prefix), url, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_transport(transport);
    options
}

fn rumqttc_round_trip(shards: usize) {
    let pki = Pki::new();
    let b = start(shards, Some(&pki), |_| {});
    let ws_url = format!("ws://127.0.0.1:{}/mqtt", b.ws.port());
    let wss = b.wss.unwrap();
    let wss_url = format!("wss://127.0.0.1:{}/mqtt", wss.port());
    let tls = || Transport::wss_with_config(TlsConfiguration::Rustls(pki.client_config()));
    let topic = unique_topic("ws/rt");
    let mut ws_sub = MqttClient::connect(rumqttc_options(
        ws_url.clone(),
        b.ws.port(),
        "ws-sub",
        Transport::Ws,
    ));
    let mut wss_sub = MqttClient::connect(rumqttc_options(
        wss_url.clone(),
        wss.port(),
        "wss-sub",
        tls(),
    ));
    assert_eq!(
        ws_sub.subscribe(&topic, QoS::AtLeastOnce),
        Some(QoS::AtLeastOnce)
    );
    assert_eq!(
        wss_sub.subscribe(&topic, QoS::AtLeastOnce),
        Some(QoS::AtLeastOnce)
    );
    let ws_pub = MqttClient::connect(rumqttc_options(
        ws_url,
        b.ws.port(),
        "ws-pub",
        Transport::Ws,
    ));
    let wss_pub = MqttClient::connect(rumqttc_options(wss_url, wss.port(), "wss-pub", tls()));
    // Payloads from 1 B to past a 64 KiB frame length (the 8-byte extended length).
    let sizes = [1usize, 125, 126, 4000, 70_000];
    for (k, size) in sizes.iter().enumerate() {
        let publisher = if k % 2 == 0 { &ws_pub } else { &wss_pub };
        publisher.publish(&topic, QoS::AtLeastOnce, false, vec![k as u8; *size]);
    }
    for sub in [&mut ws_sub, &mut wss_sub] {
        // Two publishers: order holds per publisher only.
        let mut got: Vec<(u8, usize)> = (0..sizes.len())
            .map(|_| {
                let publish = sub.recv_publish();
                assert_eq!(publish.topic, topic);
                let k = publish.payload[0];
                assert!(publish.payload.iter().all(|&b| b == k), "payload intact");
                (k, publish.payload.len())
            })
            .collect();
        got.sort();
        let expected: Vec<(u8, usize)> = sizes
            .iter()
            .enumerate()
            .map(|(k, &s)| (k as u8, s))
            .collect();
        assert_eq!(got, expected);
    }
    drop(b.broker);
}

#[test]
fn rumqttc_over_ws_and_wss_round_trip_on_1_shard() {
    rumqttc_round_trip(1);
}

#[test]
fn rumqttc_over_ws_and_wss_round_trip_on_2_shards() {
    rumqttc_round_trip(2);
}

/// A 5.0 client over `ws`, a 5.0 client over `wss` and a 3.1.1 client over plain TCP
/// exchange messages every way.
fn v5_and_plain_clients_exchange(shards: usize) {
    let pki = Pki::new();
    let b = start(shards, Some(&pki), |_| {});
    let topic = unique_topic("ws/mix");
    let mut ws = WsClient::connect(b.ws, None, &v5_connect(&unique_id("ws5")));
    let mut wss = WsClient::connect(b.wss.unwrap(), Some(&pki), &v5_connect(&unique_id("wss5")));
    let mut plain = RawClient::connect(b.plain, &unique_id("tcp311"));
    for client in [&mut ws, &mut wss] {
        client.send(&v5_subscribe(1, &topic, 1));
        let suback = client.read_packet();
        assert_eq!(suback.first_byte, 0x90);
        assert_eq!(suback.body, vec![0, 1, 0, 1], "granted QoS 1");
    }
    assert_eq!(plain.subscribe(1, &[(&topic, 1)]), vec![1]);
    ws.send(&v5_publish(&topic, 0, 0, b"from ws"));
    wss.send(&v5_publish(&topic, 0, 0, b"from wss"));
    plain.publish(&topic, 0, false, 0, b"from tcp");
    for client in [&mut ws, &mut wss] {
        let mut got: Vec<Vec<u8>> = (0..3)
            .map(|_| v5_publish_fields(&client.read_packet()).1)
            .collect();
        got.sort();
        assert_eq!(got, [&b"from tcp"[..], b"from ws", b"from wss"]);
    }
    let mut got: Vec<Vec<u8>> = (0..3).map(|_| plain.read_publish().payload).collect();
    got.sort();
    assert_eq!(got, [&b"from tcp"[..], b"from ws", b"from wss"]);
    drop(b.broker);
}

#[test]
fn v5_over_ws_and_wss_and_3_1_1_over_tcp_exchange_messages_on_1_shard() {
    v5_and_plain_clients_exchange(1);
}

#[test]
fn v5_over_ws_and_wss_and_3_1_1_over_tcp_exchange_messages_on_2_shards() {
    v5_and_plain_clients_exchange(2);
}

#[test]
fn subprotocols_mqtt_and_mqttv3_1_are_chosen_and_none_is_accepted() {
    let b = start(1, None, |_| {});
    for (offered, chosen) in [
        (Some("mqtt"), Some("mqtt")),
        (Some("mqttv3.1"), Some("mqttv3.1")),
        (Some("wamp, mqtt"), Some("mqtt")),
        (None, None),
    ] {
        let (mut client, got) = WsClient::try_open(b.ws, None, "/mqtt", offered).expect("upgrade");
        assert_eq!(got.as_deref(), chosen, "offered {offered:?}");
        client.send(&Connect::v311(&unique_id("subproto")).bytes());
        assert_eq!(client.read_packet().connack(), (false, 0));
    }
    drop(b.broker);
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

fn split_and_joined_packets(shards: usize) {
    let b = start(shards, None, |_| {});
    let topic = unique_topic("ws/frames");
    let mut sub = RawClient::connect(b.plain, &unique_id("frames-sub"));
    assert_eq!(sub.subscribe(1, &[(&topic, 0)]), vec![0]);
    let mut client = WsClient::open(b.ws, None);
    // The CONNECT split over three binary messages, the middle one a fragmented message of
    // three frames (binary, continuation, final continuation).
    let connect = Connect::v311(&unique_id("frames")).bytes();
    let (a, rest) = connect.split_at(3);
    let (b1, rest) = rest.split_at(4);
    let (b2, c) = rest.split_at(2);
    client.send(a);
    client.send_frame(Frame::message(
        b1.to_vec(),
        OpCode::Data(Data::Binary),
        false,
    ));
    client.send_frame(Frame::message(
        b2.to_vec(),
        OpCode::Data(Data::Continue),
        false,
    ));
    client.send_frame(Frame::message(
        Vec::new(),
        OpCode::Data(Data::Continue),
        true,
    ));
    client.send(c);
    assert_eq!(client.read_packet().connack(), (false, 0));
    // Three PUBLISHes and a PINGREQ in one frame, then a PUBLISH cut in the middle of its
    // payload, across two frames.
    let mut joined = Vec::new();
    for k in 0..3u8 {
        joined.extend(publish_bytes(
            topic.as_bytes(),
            0,
            false,
            false,
            0,
            &[b'0' + k],
        ));
    }
    joined.extend_from_slice(&PINGREQ);
    client.send(&joined);
    assert_eq!(client.read_packet().first_byte, PINGRESP[0]);
    let long = publish_bytes(topic.as_bytes(), 0, false, false, 0, &[b'x'; 300]);
    client.send(&long[..150]);
    client.send(&long[150..]);
    for expected in [&b"0"[..], b"1", b"2", &[b'x'; 300]] {
        assert_eq!(sub.read_publish().payload, expected);
    }
    drop(b.broker);
}

#[test]
fn packets_split_across_frames_and_several_in_one_frame_on_1_and_2_shards() {
    split_and_joined_packets(1);
    split_and_joined_packets(2);
}

#[test]
fn ping_is_answered_with_pong_carrying_its_payload() {
    let pki = Pki::new();
    let b = start(1, Some(&pki), |_| {});
    for pki in [None, Some(&pki)] {
        let addr = if pki.is_some() { b.wss.unwrap() } else { b.ws };
        let mut client = WsClient::connect(addr, pki, &Connect::v311(&unique_id("ping")).bytes());
        client
            .ws
            .send(Message::Ping(b"are you there".to_vec().into()))
            .unwrap();
        match client.read_message() {
            Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
            other => panic!("expected a pong, got {other:?}"),
        }
        client.ping_mqtt();
    }
    drop(b.broker);
}

/// [RFC 6455 5.5.1] A close is answered with a close (its code echoed), then the broker
/// closes the TCP connection. No DISCONNECT came first, so the will is published
/// [MQTT-3.1.2-8].
fn close_handshake(shards: usize) {
    let pki = Pki::new();
    let b = start(shards, Some(&pki), |_| {});
    for pki in [None, Some(&pki)] {
        let addr = if pki.is_some() { b.wss.unwrap() } else { b.ws };
        let will_topic = unique_topic("ws/will");
        let mut watcher = RawClient::connect(b.plain, &unique_id("will-watch"));
        assert_eq!(watcher.subscribe(1, &[(&will_topic, 0)]), vec![0]);
        let mut connect = Connect::v311(&unique_id_on(1 % shards, shards, "closer"));
        connect.will = Some(Will {
            topic: will_topic.clone(),
            payload: b"gone".to_vec(),
            qos: 0,
            retain: false,
        });
        let mut client = WsClient::connect(addr, pki, &connect.bytes());
        client
            .ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .unwrap();
        match client.read_message() {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected the close answered, got {other:?}"),
        }
        match client.ws.read() {
            Err(tungstenite::Error::ConnectionClosed) => {}
            other => panic!("expected the end after the close, got {other:?}"),
        }
        assert_eq!(watcher.read_publish().payload, b"gone");
    }
    drop(b.broker);
}

#[test]
fn close_handshake_is_answered_then_closed_and_the_will_published_on_1_and_2_shards() {
    close_handshake(1);
    close_handshake(2);
}

#[test]
fn broken_frame_rules_close_with_their_code_and_only_that_connection() {
    let b = start(1, None, |config| config.limits.packet_size_max = 1024);
    let connect = Connect::v311(&unique_id("rules")).bytes();
    let cases: [(&str, Vec<u8>, u16); 5] = [
        // [RFC 6455 5.1] A client frame must be masked.
        ("unmasked", client_frame(0x82, &connect, false), 1002),
        // MQTT over WebSocket is binary [MQTT-6.0.0-1].
        ("text", client_frame(0x81, b"{\"hello\":1}", true), 1003),
        // Larger than packet_size_max: never buffered for.
        ("oversized", client_frame(0x82, &[0u8; 2000], true), 1009),
        (
            "continuation first",
            client_frame(0x80, &connect, true),
            1002,
        ),
        ("reserved bits", client_frame(0xC2, &connect, true), 1002),
    ];
    for (what, frame, code) in cases {
        let mut stream = raw_upgraded(b.ws);
        stream.write_all(&frame).unwrap();
        let bytes = read_to_close(&mut stream);
        let close = [0x88, 2, (code >> 8) as u8, code as u8];
        assert!(bytes.ends_with(&close), "{what}: {bytes:02x?}");
    }
    // The oversized frame is refused at its header, before any payload arrives.
    let mut stream = raw_upgraded(b.ws);
    stream.write_all(&[0x82, 0x80 | 127]).unwrap();
    stream.write_all(&(1u64 << 40).to_be_bytes()).unwrap();
    stream.write_all(&[1, 2, 3, 4]).unwrap();
    assert_closed_with(&mut stream, 1009);
    // A connected client meanwhile is unharmed.
    let mut client = WsClient::connect(b.ws, None, &Connect::v311(&unique_id("alive")).bytes());
    client.ping_mqtt();
    assert_broker_still_serves(b.plain);
    drop(b.broker);
}

// ---------------------------------------------------------------------------------------------
// The upgrade
// ---------------------------------------------------------------------------------------------

#[test]
fn a_wrong_path_gets_404_and_a_path_of_our_own_is_honoured() {
    let b = start(1, None, |config| config.listener[0].path = "/broker".into());
    let mut stream = tcp(b.ws);
    stream.write_all(&upgrade_request("/mqtt")).unwrap();
    let bytes = read_to_close(&mut stream);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
    match WsClient::try_open(b.ws, None, "/elsewhere", Some("mqtt")).map_err(|e| *e) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        Err(e) => panic!("expected 404, got {e}"),
        Ok(_) => panic!("expected 404, got an upgrade"),
    }
    let (mut client, _) = WsClient::try_open(b.ws, None, "/broker?x=1", Some("mqtt")).unwrap();
    client.send(&Connect::v311(&unique_id("path")).bytes());
    assert_eq!(client.read_packet().connack(), (false, 0));
    drop(b.broker);
}

fn garbage_before_the_upgrade(shards: usize) {
    let b = start(shards, None, |_| {});
    let mut ws = WsClient::connect(b.ws, None, &Connect::v311(&unique_id("bystander")).bytes());
    // MQTT bytes where the HTTP request belongs: refused in HTTP, then closed.
    let mut stream = tcp(b.ws);
    stream.write_all(&Connect::v311("raw").bytes()).unwrap();
    let bytes = read_to_close(&mut stream);
    assert!(bytes.starts_with(b"HTTP/1.1 400 "), "{bytes:02x?}");
    // A plain HTTP GET without the upgrade headers.
    let mut stream = tcp(b.ws);
    stream
        .write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_to_close(&mut stream).starts_with(b"HTTP/1.1 400 "));
    // A request that never ends: refused at REQUEST_SIZE_MAX.
    let mut stream = tcp(b.ws);
    stream.write_all(b"GET /mqtt HTTP/1.1\r\nX-Long: ").unwrap();
    let _ = stream.write_all(&vec![b'a'; 10_000]);
    assert!(read_to_close(&mut stream).starts_with(b"HTTP/1.1 431 "));
    // Random bytes that are not even HTTP.
    let mut stream = tcp(b.ws);
    stream
        .write_all(&[0xff, 0x00, 0x13, 0x37, b'\r', b'\n', b'\r', b'\n'])
        .unwrap();
    assert!(read_to_close(&mut stream).starts_with(b"HTTP/1.1 400 "));
    ws.ping_mqtt();
    assert_broker_still_serves(b.plain);
    drop(b.broker);
}

#[test]
fn garbage_before_the_upgrade_closes_only_that_connection_on_1_and_2_shards() {
    garbage_before_the_upgrade(1);
    garbage_before_the_upgrade(2);
}

#[test]
fn a_silent_or_stalled_upgrade_is_closed_at_the_connect_deadline() {
    let b = start(1, None, |config| config.limits.connect_timeout_secs = 1);
    let mut stream = tcp(b.ws);
    stream.write_all(b"GET /mqtt HTTP/1.1\r\nHost:").unwrap();
    let started = Instant::now();
    assert!(read_to_close(&mut stream).is_empty());
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(b.broker);
}

// ---------------------------------------------------------------------------------------------
// Hand-off
// ---------------------------------------------------------------------------------------------

/// A client homed on the shard that did not accept it is handed over with its WebSocket
/// (and TLS) state; the upgrade request and the CONNECT in one write make the 101 travel with
/// the state too. Each connection crosses with probability 1/2: repeat until the broker
/// counted hand-offs of both kinds.
#[test]
fn ws_and_wss_clients_homed_on_the_other_shard_are_handed_over_with_their_state() {
    let pki = Pki::new();
    let b = start(2, Some(&pki), |_| {});
    let topic = unique_topic("ws/handoff");
    let mut sub = RawClient::connect(b.plain, &unique_id_on(0, 2, "handoff-sub"));
    assert_eq!(sub.subscribe(1, &[(&topic, 0)]), vec![0]);
    let deadline = Instant::now() + WAIT * 3;
    let mut round = 0u32;
    loop {
        round += 1;
        for (k, pki) in [None, Some(&pki)].into_iter().enumerate() {
            let addr = if pki.is_some() { b.wss.unwrap() } else { b.ws };
            let id = unique_id_on(k, 2, "handoff");
            let mut client = WsClient::connect(addr, pki, &Connect::v311(&id).bytes());
            client.ping_mqtt();
            let payload = format!("round {round} via {k}");
            client.send(&publish_bytes(
                topic.as_bytes(),
                0,
                false,
                false,
                0,
                payload.as_bytes(),
            ));
            assert_eq!(sub.read_publish().payload, payload.as_bytes());
            client.ws.close(None).unwrap();
        }
        // Pipelined: the request and the CONNECT frame in one write.
        let mut stream = tcp(b.ws);
        let mut bytes = upgrade_request("/mqtt");
        let connect = Connect::v311(&unique_id_on(round as usize % 2, 2, "pipelined")).bytes();
        bytes.extend(client_frame(0x82, &connect, true));
        stream.write_all(&bytes).unwrap();
        let (head, mut rest) = read_response(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        while rest.len() < 6 {
            let mut chunk = [0u8; 64];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before the CONNACK");
            rest.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(
            rest[..6],
            [0x82, 4, 0x20, 2, 0, 0],
            "CONNACK in a binary frame"
        );
        let handed: u64 = b.broker.stats().iter().map(|s| s.handoffs_in).sum();
        if handed >= 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {handed} WebSocket connections were handed over"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(b.broker);
}

// ---------------------------------------------------------------------------------------------
// Per-listener settings (issue 9 item 5)
// ---------------------------------------------------------------------------------------------

#[test]
fn allow_anonymous_per_listener_overrides_the_top_level_one() {
    let b = start(1, None, |config| {
        config.allow_anonymous = true;
        config.listener[0].allow_anonymous = Some(false);
    });
    // The plain listener follows the top-level setting, the ws one its own.
    let mut plain = RawClient::open(b.plain);
    plain.send(&Connect::v311(&unique_id("anon-tcp")).bytes());
    assert_eq!(plain.read_packet().connack(), (false, 0));
    let mut ws = WsClient::open(b.ws, None);
    ws.send(&Connect::v311(&unique_id("anon-ws")).bytes());
    assert_eq!(ws.read_packet().connack(), (false, 5), "not authorized");
    let mut ws5 = WsClient::open(b.ws, None);
    ws5.send(&v5_connect(&unique_id("anon-ws5")));
    let connack = ws5.read_packet();
    assert_eq!((connack.first_byte, connack.body[1]), (0x20, 0x87));
    drop(b.broker);

    let b = start(1, None, |config| {
        config.allow_anonymous = false;
        config.listener[0].allow_anonymous = Some(true);
    });
    let mut plain = RawClient::open(b.plain);
    plain.send(&Connect::v311(&unique_id("anon-tcp")).bytes());
    assert_eq!(plain.read_packet().connack(), (false, 5));
    let mut ws = WsClient::open(b.ws, None);
    ws.send(&Connect::v311(&unique_id("anon-ws")).bytes());
    assert_eq!(ws.read_packet().connack(), (false, 0));
    drop(b.broker);
}

#[test]
fn max_connections_is_the_mosquitto_name_of_connections_max() {
    let config = Config::from_toml(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"ws\"\nmax_connections = 1\n",
    )
    .expect("valid");
    let mut test = test_config();
    test.listener = config.listener;
    test.listen = None;
    let broker = ringmq::broker::Broker::start(test).expect("start");
    let addr = broker.listener_addrs()[0];
    let b = TestBroker::wrap(broker);
    let mut first = WsClient::connect(addr, None, &Connect::v311(&unique_id("max1")).bytes());
    // The second is closed at accept: its upgrade gets no answer.
    assert!(WsClient::try_open(addr, None, "/mqtt", Some("mqtt")).is_err());
    first.ping_mqtt();
    drop(b);
}

#[test]
fn an_idle_client_is_only_the_frames_it_was_sent() {
    // A connected WebSocket client that sends nothing hears nothing (no frames of our own).
    let b = start(1, None, |_| {});
    let mut client = WsClient::connect(b.ws, None, &Connect::v311(&unique_id("idle")).bytes());
    client.set_read_timeout(Duration::from_millis(300));
    match client.ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    drop(b.broker);
}

// ---------------------------------------------------------------------------------------------
// Eclipse Paho (Python) over its websockets transport
// ---------------------------------------------------------------------------------------------

/// A subscriber and a publisher from paho-mqtt (Debian's python3-paho-mqtt, tests/setup.sh)
/// over `ws` or `wss`; prints `GOT <topic> <payload>`. Bounded by its own 4 s waits.
const PAHO_SCRIPT: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt

host, port, scheme, ca, version, topic = sys.argv[1:7]
protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
subscribed, got, result = threading.Event(), threading.Event(), {}

def client(name):
    c = mqtt.Client(client_id=name, protocol=protocol, transport="websockets")
    c.ws_set_options(path="/mqtt")
    if scheme == "wss":
        c.tls_set(ca_certs=ca)
    return c

def on_connect(c, userdata, flags, rc, *rest):
    c.subscribe(topic, qos=1)

def on_message(c, userdata, message):
    result["message"] = (message.topic, message.payload.decode())
    got.set()

sub = client("paho-sub-" + version + scheme)
sub.on_connect = on_connect
sub.on_subscribe = lambda *args: subscribed.set()
sub.on_message = on_message
sub.connect(host, int(port), keepalive=30)
sub.loop_start()
if not subscribed.wait(4):
    print("no SUBACK"); sys.exit(2)
pub = client("paho-pub-" + version + scheme)
pub.connect(host, int(port), keepalive=30)
pub.loop_start()
pub.publish(topic, b"hello from paho", qos=1).wait_for_publish(4)
if not got.wait(4):
    print("no message"); sys.exit(3)
print("GOT", *result["message"])
for c in (pub, sub):
    c.disconnect()
    c.loop_stop()
"#;

#[test]
fn paho_over_ws_and_wss_3_1_1_and_5_on_2_shards() {
    let pki = Pki::new();
    let b = start(2, Some(&pki), |_| {});
    let script = pki.path("paho_ws.py");
    std::fs::write(&script, PAHO_SCRIPT).unwrap();
    for (scheme, addr) in [("ws", b.ws), ("wss", b.wss.unwrap())] {
        for version in ["311", "5"] {
            let topic = unique_topic("ws/paho");
            let args = strings(&[
                script.to_str().unwrap(),
                "127.0.0.1",
                &addr.port().to_string(),
                scheme,
                pki.path("ca.pem").to_str().unwrap(),
                version,
                &topic,
            ]);
            // Debian's interpreter, which the package installs into (PATH may name another).
            let finished = Proc::spawn("/usr/bin/python3", &args).finish();
            assert!(
                finished.status.success(),
                "paho {scheme} {version}: {:?} {}",
                finished.stdout,
                finished.stderr
            );
            let expected = format!("GOT {topic} hello from paho");
            assert!(finished.stdout.contains(&expected), "{:?}", finished.stdout);
        }
    }
    drop(b.broker);
}
