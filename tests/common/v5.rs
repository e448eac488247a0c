//! An MQTT 5 client over a plain `TcpStream` for the v5 tests: packets are encoded and decoded
//! by rumqttc's own v5 codec (`rumqttc::v5::mqttbytes`, independent of ringmq's), or written
//! byte by byte where no client would send them; every read is bounded and keeps the bytes as
//! they came, so a test can check the wire as well as rumqttc's reading of it.
//!
//! A test file's own helpers (a builder for its packets, a flow only it needs) stay in the file,
//! in an `impl V5Client` block of its own.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, Disconnect, DisconnectReasonCode, Filter, LastWill, Login,
    Packet, PingReq, PubAck, PubComp, PubRec, PubRel, Publish, SubAck, Subscribe,
    SubscribeProperties,
};
use rumqttc::v5::mqttbytes::QoS;

use super::{packet_extent, PINGREQ, QUIET, WAIT};

/// A CONNECT with keep alive 60 s.
pub fn connect(
    client_id: &str,
    clean_start: bool,
    properties: Option<ConnectProperties>,
) -> Connect {
    Connect {
        keep_alive: 60,
        client_id: client_id.to_string(),
        clean_start,
        properties,
    }
}

/// One packet as it came off the wire: its first byte, its body (after the remaining length),
/// and rumqttc's reading of it (`None` where rumqttc cannot read it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub first_byte: u8,
    pub body: Vec<u8>,
    pub packet: Option<Packet>,
}

impl Frame {
    /// The packet type (high nibble of the first byte).
    pub fn kind(&self) -> u8 {
        self.first_byte >> 4
    }

    pub fn connack(&self) -> ConnAck {
        match &self.packet {
            Some(Packet::ConnAck(ack)) => ack.clone(),
            other => panic!("expected CONNACK, got {other:?} ({self:?})"),
        }
    }

    pub fn disconnect(&self) -> Disconnect {
        match &self.packet {
            Some(Packet::Disconnect(disconnect)) => disconnect.clone(),
            other => panic!("expected DISCONNECT, got {other:?} ({self:?})"),
        }
    }

    pub fn puback(&self) -> PubAck {
        match &self.packet {
            Some(Packet::PubAck(ack)) => ack.clone(),
            other => panic!("expected PUBACK, got {other:?} ({self:?})"),
        }
    }

    pub fn suback(&self) -> SubAck {
        match &self.packet {
            Some(Packet::SubAck(ack)) => ack.clone(),
            other => panic!("expected SUBACK, got {other:?} ({self:?})"),
        }
    }

    pub fn publish(&self) -> Publish {
        match &self.packet {
            Some(Packet::Publish(publish)) => publish.clone(),
            other => panic!("expected PUBLISH, got {other:?} ({self:?})"),
        }
    }

    /// The reason code of a CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP or DISCONNECT, from the
    /// bytes (absent on an ack or a DISCONNECT: 0x00).
    pub fn reason_code(&self) -> u8 {
        match self.kind() {
            2 => self.body[1],
            4..=7 => self.body.get(2).copied().unwrap_or(0),
            14 => self.body.first().copied().unwrap_or(0),
            kind => panic!("no reason code on packet type {kind}: {self:?}"),
        }
    }

    /// The reason codes of a SUBACK or UNSUBACK, from the bytes: after the packet id and the
    /// properties (their length is one byte here: the broker sends none).
    pub fn reason_codes(&self) -> Vec<u8> {
        let properties_len = usize::from(self.body[2]);
        assert!(
            properties_len < 0x80,
            "short properties expected: {:?}",
            self.body
        );
        self.body[3 + properties_len..].to_vec()
    }

    /// The Reason String of a CONNACK, DISCONNECT, publish ack, SUBACK or UNSUBACK, if it has
    /// one.
    pub fn reason_string(&self) -> Option<String> {
        match &self.packet {
            Some(Packet::SubAck(a)) => a.properties.as_ref()?.reason_string.clone(),
            Some(Packet::UnsubAck(a)) => a.properties.as_ref()?.reason_string.clone(),
            Some(Packet::Disconnect(d)) => d.properties.as_ref()?.reason_string.clone(),
            Some(Packet::ConnAck(a)) => a.properties.as_ref()?.reason_string.clone(),
            Some(Packet::PubAck(a)) => a.properties.as_ref()?.reason_string.clone(),
            Some(Packet::PubRec(a)) => a.properties.as_ref()?.reason_string.clone(),
            Some(Packet::PubRel(a)) => a.properties.as_ref()?.reason_string.clone(),
            Some(Packet::PubComp(a)) => a.properties.as_ref()?.reason_string.clone(),
            other => panic!("no reason string on {other:?}"),
        }
    }
}

/// What a bounded read ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Frame(Box<Frame>),
    /// An orderly end of stream (FIN).
    End,
    /// A reset, or another error: the peer closed with bytes of ours unread.
    Reset(ErrorKind),
    TimedOut,
}

/// A TCP client speaking MQTT 5 through rumqttc's codec. Its `receive` family answers the
/// broker's QoS 1/2 PUBLISHes itself (unless `acks` is off) and completes its own QoS 2 flows.
pub struct V5Client {
    stream: TcpStream,
    inbox: Vec<u8>,
    next_packet_id: u16,
    /// Whether `receive` and `try_receive` acknowledge the PUBLISH they return.
    pub acks: bool,
}

impl V5Client {
    /// Opens a TCP connection; sends nothing.
    pub fn open(addr: SocketAddr) -> V5Client {
        let stream = TcpStream::connect_timeout(&addr, WAIT)
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream.set_write_timeout(Some(WAIT)).expect("write timeout");
        V5Client {
            stream,
            inbox: Vec::new(),
            next_packet_id: 1,
            acks: true,
        }
    }

    /// Sends `connect` (with `will`); returns the client and whatever answered (a CONNACK, or
    /// a DISCONNECT), not judged.
    pub fn connect_with(
        addr: SocketAddr,
        connect: Connect,
        will: Option<LastWill>,
    ) -> (V5Client, Frame) {
        V5Client::connect_login(addr, connect, will, None)
    }

    /// As `connect_with`, with a username and password.
    pub fn connect_login(
        addr: SocketAddr,
        connect: Connect,
        will: Option<LastWill>,
        login: Option<Login>,
    ) -> (V5Client, Frame) {
        let mut client = V5Client::open(addr);
        client.send(Packet::Connect(connect, will, login));
        let frame = client.read();
        (client, frame)
    }

    /// Sends `connect`, expecting a CONNACK that accepts it; returns the client and the
    /// CONNACK.
    pub fn connect_accepted(addr: SocketAddr, connect: Connect) -> (V5Client, Frame) {
        let (client, frame) = V5Client::connect_with(addr, connect, None);
        assert_eq!(frame.first_byte, 0x20, "CONNACK expected: {frame:?}");
        assert_eq!(frame.body[1], 0, "CONNACK refused: {frame:?}");
        (client, frame)
    }

    /// Connects with clean start and `properties`, expecting success.
    pub fn connect_props(
        addr: SocketAddr,
        client_id: &str,
        properties: ConnectProperties,
    ) -> V5Client {
        V5Client::connect_accepted(addr, connect(client_id, true, Some(properties))).0
    }

    /// Connects with clean start and no properties, expecting success.
    pub fn connect(addr: SocketAddr, client_id: &str) -> V5Client {
        V5Client::connect_accepted(addr, connect(client_id, true, None)).0
    }

    pub fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).expect("rumqttc encodes it");
        self.send_bytes(&out);
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.try_send_bytes(bytes)
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// For a test that judges a refused write itself.
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// A fresh packet id: 1, 2, ... 60000, then 1 again.
    pub fn packet_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id % 60_000 + 1;
        id
    }

    /// The next packet within `within`, or how the wait ended: an orderly close, a reset, or
    /// the time.
    pub fn read_within(&mut self, within: Duration) -> Received {
        let deadline = Instant::now() + within;
        loop {
            if let Some(frame) = take_frame(&mut self.inbox) {
                return Received::Frame(Box::new(frame));
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Received::TimedOut;
            };
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("read timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Received::End,
                Ok(n) => self.inbox.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Received::Reset(e.kind()),
            }
        }
    }

    /// The next packet within `within`, or `None` on timeout or when the broker closed.
    pub fn try_read(&mut self, within: Duration) -> Option<Frame> {
        match self.read_within(within) {
            Received::Frame(frame) => Some(*frame),
            Received::End | Received::Reset(_) | Received::TimedOut => None,
        }
    }

    /// The next packet; panics after `WAIT`.
    pub fn read(&mut self) -> Frame {
        self.try_read(WAIT)
            .unwrap_or_else(|| panic!("no packet within {WAIT:?}"))
    }

    /// The next packet must be a PUBLISH; it is not acknowledged.
    pub fn read_publish(&mut self) -> Publish {
        match self.read().packet {
            Some(Packet::Publish(publish)) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// True when the broker closes the connection within `WAIT` (packets before are skipped).
    pub fn closed(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.try_read(WAIT).is_none() {
                return true;
            }
        }
        false
    }

    /// SUBSCRIBE `filters` with `properties`; returns the SUBACK (its packet id checked).
    pub fn subscribe_frame(
        &mut self,
        filters: Vec<Filter>,
        properties: Option<SubscribeProperties>,
    ) -> Frame {
        let pkid = self.packet_id();
        self.send(Packet::Subscribe(Subscribe {
            pkid,
            ..Subscribe::new_many(filters, properties)
        }));
        let frame = self.read();
        assert_eq!(frame.first_byte, 0x90, "SUBACK expected: {frame:?}");
        assert_eq!(
            frame.body[..2],
            pkid.to_be_bytes(),
            "the SUBACK's packet id: {frame:?}"
        );
        frame
    }

    /// SUBSCRIBE `filters` with `properties`; returns the SUBACK's reason codes, from the bytes.
    pub fn subscribe_codes(
        &mut self,
        filters: Vec<Filter>,
        properties: Option<SubscribeProperties>,
    ) -> Vec<u8> {
        self.subscribe_frame(filters, properties).reason_codes()
    }

    /// SUBSCRIBE one filter, without properties; whatever was granted, a SUBACK comes back.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.subscribe_frame(vec![Filter::new(filter, qos)], None);
    }

    /// Sends `publish`; returns what answers it (its PUBACK or PUBREC, or a DISCONNECT).
    pub fn publish(&mut self, publish: Publish) -> Frame {
        self.send(Packet::Publish(publish));
        self.read()
    }

    /// The connection still answers: PINGREQ gets PINGRESP, and nothing comes before it.
    pub fn assert_alive(&mut self) {
        self.send_bytes(&PINGREQ);
        let frame = self.read();
        assert_eq!(frame.first_byte, 0xD0, "PINGRESP expected: {frame:?}");
    }

    /// Waits until the broker answers a PINGREQ: what was sent before is handled (QoS 2 flows
    /// of our own publishes completed on the way).
    pub fn sync(&mut self) {
        self.send(Packet::PingReq(PingReq));
        loop {
            let frame = self.read();
            match frame.packet {
                Some(Packet::PingResp(_)) => return,
                packet if self.answer_own_flow(&packet) => {}
                other => panic!("only acks before PINGRESP: {other:?}"),
            }
        }
    }

    /// Answers an ack of our own publishes: PUBREC gets PUBREL, PUBREL gets PUBCOMP, PUBACK
    /// and PUBCOMP end a flow. False for anything else.
    fn answer_own_flow(&mut self, packet: &Option<Packet>) -> bool {
        match packet {
            Some(Packet::PubRec(rec)) => self.send(Packet::PubRel(PubRel::new(rec.pkid, None))),
            Some(Packet::PubRel(rel)) => self.send(Packet::PubComp(PubComp::new(rel.pkid, None))),
            Some(Packet::PubAck(_) | Packet::PubComp(_)) => {}
            _ => return false,
        }
        true
    }

    /// The next PUBLISH within `within`, acknowledged (PUBACK / PUBREC) when `acks` is on;
    /// acks of our own publishes on the way are answered. `None` if none comes.
    pub fn try_receive(&mut self, within: Duration) -> Option<Publish> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let frame = self.try_read(left)?;
            match frame.packet {
                Some(Packet::Publish(publish)) => {
                    if self.acks {
                        match publish.qos {
                            QoS::AtMostOnce => {}
                            QoS::AtLeastOnce => {
                                self.send(Packet::PubAck(PubAck::new(publish.pkid, None)))
                            }
                            QoS::ExactlyOnce => {
                                self.send(Packet::PubRec(PubRec::new(publish.pkid, None)))
                            }
                        }
                    }
                    return Some(publish);
                }
                packet if self.answer_own_flow(&packet) => {}
                other => panic!("unexpected {other:?} ({:02x})", frame.first_byte),
            }
        }
    }

    /// The next PUBLISH, as `try_receive`; panics after `WAIT`.
    pub fn receive(&mut self) -> Publish {
        self.try_receive(WAIT)
            .unwrap_or_else(|| panic!("no PUBLISH within {WAIT:?}"))
    }

    /// No PUBLISH within `QUIET` (acks of our own publishes answered on the way).
    pub fn expect_no_publish(&mut self, why: &str) {
        if let Some(publish) = self.try_receive(QUIET) {
            panic!("{why}: got {publish:?}");
        }
    }

    /// The server DISCONNECT's reason code (acks of ours before it are skipped), then the
    /// close.
    pub fn expect_disconnect(&mut self) -> u8 {
        loop {
            let frame = self.read();
            if frame.first_byte == 0xE0 {
                assert!(self.try_read(WAIT).is_none(), "closed after DISCONNECT");
                return frame.body.first().copied().unwrap_or(0);
            }
            assert_eq!(frame.kind(), 4, "only acks before: {frame:?}");
        }
    }

    /// DISCONNECT (normal), then waits for the broker to close: the session is detached by
    /// then.
    pub fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )));
        let deadline = Instant::now() + WAIT;
        while self.try_read(WAIT).is_some() {
            assert!(Instant::now() < deadline, "the broker never closed");
        }
    }
}

/// Splits one packet off the front of `inbox` if it is complete, as it came and as rumqttc
/// reads it.
fn take_frame(inbox: &mut Vec<u8>) -> Option<Frame> {
    let (header_len, body_len) = packet_extent(inbox)?;
    let whole: Vec<u8> = inbox.drain(..header_len + body_len).collect();
    let packet = Packet::read(&mut BytesMut::from(&whole[..]), None).ok();
    Some(Frame {
        first_byte: whole[0],
        body: whole[header_len..].to_vec(),
        packet,
    })
}
