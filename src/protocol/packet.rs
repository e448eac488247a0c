//! The MQTT 3.1.1 and 5.0 control packets as values. One set of types serves both versions:
//! fields that only MQTT 5 has (properties, reason codes on acks) are empty or `Success` under
//! 3.1.1, and the encoder leaves them out. Strings are `ByteString` and binary data `Bytes`, so a
//! decoded packet shares the receive buffer instead of copying out of it.

use bytes::Bytes;
use bytestring::ByteString;

use super::properties::Props;
use super::reason::ReasonCode;

/// The protocol level byte of CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name "MQIsdp", level 3.
    V3_1 = 3,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V3_1_1 = 4,
    /// MQTT 5.0, protocol name "MQTT", level 5.
    V5 = 5,
}

impl ProtocolVersion {
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// `None` for 3, which no packet may carry [MQTT-3.3.1-4].
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The fixed header's packet type, high nibble of the first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// The packet's MQTT 5 properties; `None` for PINGREQ and PINGRESP, which have none.
    pub fn properties_mut(&mut self) -> Option<&mut Props> {
        match self {
            Packet::Connect(p) => Some(&mut p.properties),
            Packet::ConnAck(p) => Some(&mut p.properties),
            Packet::Publish(p) => Some(&mut p.properties),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                Some(&mut p.properties)
            }
            Packet::Subscribe(p) => Some(&mut p.properties),
            Packet::SubAck(p) => Some(&mut p.properties),
            Packet::Unsubscribe(p) => Some(&mut p.properties),
            Packet::UnsubAck(p) => Some(&mut p.properties),
            Packet::PingReq | Packet::PingResp => None,
            Packet::Disconnect(p) => Some(&mut p.properties),
            Packet::Auth(p) => Some(&mut p.properties),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// 3.1.1 "clean session", 5.0 "clean start".
    pub clean_start: bool,
    pub keepalive_secs: u16,
    /// May be empty: the server assigns one (or refuses, see [MQTT-3.1.3-7]).
    pub client_id: ByteString,
    pub will: Option<LastWill>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub properties: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastWill {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties (will delay, expiry, content type, ...).
    pub properties: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// In MQTT 5 terms. Under 3.1.x the encoder maps it to return codes 0-5:
    /// Success 0, UnsupportedProtocolVersion 1, ClientIdentifierNotValid 2, ServerUnavailable 3,
    /// BadUserNameOrPassword 4, NotAuthorized 5 (other failures: 3). The decoder maps back.
    pub code: ReasonCode,
    pub properties: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in MQTT 5 when a topic alias is set.
    pub topic: ByteString,
    /// 0 for QoS 0 (not on the wire); non-zero otherwise [MQTT-2.3.1-1].
    pub packet_id: u16,
    pub payload: Bytes,
    pub properties: Props,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubAck {
    pub packet_id: u16,
    pub code: ReasonCode,
    pub properties: Props,
}

impl PubAck {
    pub fn new(packet_id: u16) -> PubAck {
        PubAck {
            packet_id,
            code: ReasonCode::Success,
            properties: Props::NONE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    /// MQTT 5 only; false under 3.1.1.
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained on subscribe, 1: only if the subscription is new, 2: never.
    pub retain_handling: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    /// At least one [MQTT-3.8.3-3].
    pub filters: Vec<(ByteString, SubscriptionOptions)>,
    pub properties: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per filter: GrantedQoS0/1/2 or a failure (3.1.1 only has 0x80 = UnspecifiedError).
    pub codes: Vec<ReasonCode>,
    pub properties: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<ByteString>,
    pub properties: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// MQTT 5: one per filter. Empty under 3.1.1 (not on the wire).
    pub codes: Vec<ReasonCode>,
    pub properties: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// Always NormalDisconnection under 3.1.1 (no variable header).
    pub code: ReasonCode,
    pub properties: Props,
}

impl Default for Disconnect {
    fn default() -> Disconnect {
        Disconnect {
            code: ReasonCode::NORMAL_DISCONNECTION,
            properties: Props::NONE,
        }
    }
}

/// MQTT 5 only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub code: ReasonCode,
    pub properties: Props,
}

// Every PUBLISH is decoded into a `Packet` and moved through the shard: with properties boxed
// (`Props`), a packet is 80 bytes, not the ~470 it was with them inline (issue 12).
const _: () = assert!(std::mem::size_of::<Publish>() <= 80);
const _: () = assert!(std::mem::size_of::<Packet>() <= 80);
