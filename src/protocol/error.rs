//! Codec errors. A `DecodeError` is an expected operating error (a client sent bad bytes): small,
//! `Copy`, and mapped by `reason_code()` to what the spec prescribes, so the broker can answer
//! with a CONNACK or DISCONNECT carrying it (MQTT 5) before it closes the connection.

use std::fmt;

use super::reason::ReasonCode;

/// Why a packet could not be decoded. After any of these the connection's byte stream is no
/// longer trusted: the caller closes it (the spec never lets a receiver skip a bad packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Packet type 0, or 15 (AUTH) on an MQTT 3.1.x connection.
    InvalidPacketType(u8),
    /// Fixed-header flags that the packet type forbids [MQTT-2.2.2-2], or DUP set on a QoS 0
    /// PUBLISH [MQTT-3.3.1-2].
    InvalidFlags { packet_type: u8, flags: u8 },
    /// The remaining length takes more than 4 bytes [MQTT-1.5.5-1].
    MalformedRemainingLength,
    /// The whole packet (fixed header included) is larger than the limit.
    PacketTooLarge { size: u32, size_max: u32 },
    /// The packet's fields need more bytes than its remaining length declares.
    RemainingLengthTooShort,
    /// Bytes are left over after the packet's last field.
    TrailingBytes,
    /// CONNECT with a protocol name other than "MQTT" or "MQIsdp" [MQTT-3.1.2-1].
    InvalidProtocolName,
    /// CONNECT with a protocol level this codec does not speak, or that does not fit the
    /// protocol name [MQTT-3.1.2-2]. The broker answers CONNACK return code 0x01 / 0x84.
    UnsupportedProtocolVersion { level: u8 },
    /// Reserved bit, or an inconsistent will / password flag, in the CONNECT flags byte
    /// [MQTT-3.1.2-3] [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] [MQTT-3.1.2-22].
    InvalidConnectFlags(u8),
    /// QoS 3 in a PUBLISH header, a will, or subscription options [MQTT-3.3.1-4].
    InvalidQoS,
    /// A string that is not well-formed UTF-8 [MQTT-1.5.3-1].
    InvalidUtf8,
    /// A string containing U+0000 [MQTT-1.5.3-2].
    NullCharacter,
    /// A topic name containing `+` or `#` [MQTT-3.3.2-2].
    WildcardInTopicName,
    /// A zero-length topic name: never valid in 3.1.1 [MQTT-4.7.3-1]; in MQTT 5 only together
    /// with a Topic Alias.
    EmptyTopicName,
    /// Packet identifier 0 where one is required [MQTT-2.3.1-1].
    ZeroPacketId,
    /// SUBSCRIBE or UNSUBSCRIBE with no topic filter [MQTT-3.8.3-3] [MQTT-3.10.3-2].
    EmptySubscription,
    /// Reserved bits set in a subscription options byte [MQTT-3.8.3-4] (3.1.1) [MQTT-3.8.3-5].
    InvalidSubscriptionOptions(u8),
    /// Retain Handling 3, which MQTT 5 calls a protocol error (3.8.3.1).
    InvalidRetainHandling,
    /// A property that may appear only once appears again.
    DuplicateProperty(u8),
    /// A property identifier that is not allowed on this packet type (table 2.2.2.2).
    PropertyNotAllowed { id: u8 },
    /// A property identifier MQTT 5 does not define.
    UnknownProperty(u8),
    /// A property value outside its range (e.g. Receive Maximum 0, Subscription Identifier 0,
    /// a boolean byte other than 0 or 1).
    InvalidPropertyValue { id: u8 },
    /// A reason code (or 3.1.x return code) that is not allowed on this packet type.
    InvalidReasonCode(u8),
    /// Any other malformation; the text names it.
    MalformedPacket(&'static str),
    /// Any other protocol violation; the text names it.
    ProtocolError(&'static str),
}

impl DecodeError {
    /// The MQTT 5 reason code for a CONNACK or DISCONNECT answering this error.
    pub fn reason_code(self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            // [MQTT-3.1.2-1] [MQTT-3.1.2-2]: the server may answer 0x84 before it closes.
            InvalidProtocolName | UnsupportedProtocolVersion { .. } => {
                ReasonCode::UnsupportedProtocolVersion
            }
            WildcardInTopicName => ReasonCode::TopicNameInvalid,
            // [MQTT-3.3.2-8] Topic Alias 0: "Topic Alias invalid", as an alias over the maximum.
            InvalidPropertyValue { id: 0x23 } => ReasonCode::TopicAliasInvalid,
            EmptyTopicName
            | ZeroPacketId
            | EmptySubscription
            | InvalidRetainHandling
            | DuplicateProperty(_)
            | InvalidPropertyValue { .. }
            | ProtocolError(_) => ReasonCode::ProtocolError,
            InvalidPacketType(_)
            | InvalidFlags { .. }
            | MalformedRemainingLength
            | RemainingLengthTooShort
            | TrailingBytes
            | InvalidConnectFlags(_)
            | InvalidQoS
            | InvalidUtf8
            | NullCharacter
            | InvalidSubscriptionOptions(_)
            | PropertyNotAllowed { .. }
            | UnknownProperty(_)
            // A byte that is no reason code of its packet: the packet cannot be read as the
            // spec defines it (e.g. a client DISCONNECT with reason 0x01, issue 8).
            | InvalidReasonCode(_)
            | MalformedPacket(_) => ReasonCode::MalformedPacket,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeError::*;
        match *self {
            InvalidPacketType(t) => write!(f, "packet type {t} is not valid on this connection"),
            InvalidFlags { packet_type, flags } => write!(
                f,
                "fixed header flags {flags:#06b} are not valid for packet type {packet_type}"
            ),
            MalformedRemainingLength => write!(f, "the remaining length takes more than 4 bytes"),
            PacketTooLarge { size, size_max } => {
                write!(
                    f,
                    "the packet is {size} bytes, over the limit of {size_max} bytes"
                )
            }
            RemainingLengthTooShort => {
                write!(
                    f,
                    "the packet's fields run past its declared remaining length"
                )
            }
            TrailingBytes => write!(f, "bytes are left over after the packet's last field"),
            InvalidProtocolName => {
                write!(
                    f,
                    "CONNECT protocol name is neither \"MQTT\" nor \"MQIsdp\""
                )
            }
            UnsupportedProtocolVersion { level } => {
                write!(f, "CONNECT protocol level {level} is not supported")
            }
            InvalidConnectFlags(flags) => write!(f, "CONNECT flags {flags:#010b} are not valid"),
            InvalidQoS => write!(f, "QoS 3 is not a valid QoS"),
            InvalidUtf8 => write!(f, "a string is not well-formed UTF-8"),
            NullCharacter => write!(f, "a string contains the null character U+0000"),
            WildcardInTopicName => write!(f, "a topic name contains a wildcard (+ or #)"),
            EmptyTopicName => write!(f, "a topic name is empty (and no topic alias is set)"),
            ZeroPacketId => write!(f, "packet identifier 0 where a non-zero one is required"),
            EmptySubscription => write!(f, "SUBSCRIBE or UNSUBSCRIBE carries no topic filter"),
            InvalidSubscriptionOptions(options) => {
                write!(f, "subscription options {options:#010b} set reserved bits")
            }
            InvalidRetainHandling => write!(f, "retain handling 3 is not valid"),
            DuplicateProperty(id) => write!(f, "property {id:#04x} appears more than once"),
            PropertyNotAllowed { id } => {
                write!(f, "property {id:#04x} is not allowed on this packet type")
            }
            UnknownProperty(id) => write!(f, "property identifier {id:#04x} is not defined"),
            InvalidPropertyValue { id } => {
                write!(f, "property {id:#04x} has a value outside its valid range")
            }
            InvalidReasonCode(code) => {
                write!(
                    f,
                    "reason code {code:#04x} is not valid on this packet type"
                )
            }
            MalformedPacket(what) => write!(f, "malformed packet: {what}"),
            ProtocolError(what) => write!(f, "protocol error: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a packet could not be encoded: a value the wire format cannot carry, or one the spec
/// forbids sending. Nothing is written to the output when encoding fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes.
    PacketTooLarge { remaining_length: usize },
    /// A string or binary field longer than 65,535 bytes.
    FieldTooLong { len: usize },
    /// A variable byte integer value (e.g. a Subscription Identifier) over 268,435,455.
    VarIntTooLarge(u32),
    /// Packet identifier 0 where a non-zero one is required [MQTT-2.3.1-1].
    ZeroPacketId,
    /// The output buffer cannot take the whole packet.
    BufferTooSmall { needed: usize, available: usize },
    /// The packet or field cannot be sent under this protocol version, or breaks a rule the
    /// decoder enforces; the text names it.
    Invalid(&'static str),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use EncodeError::*;
        match *self {
            PacketTooLarge { remaining_length } => write!(
                f,
                "remaining length {remaining_length} exceeds the maximum of 268435455 bytes"
            ),
            FieldTooLong { len } => {
                write!(f, "a {len}-byte field exceeds the maximum of 65535 bytes")
            }
            VarIntTooLarge(value) => {
                write!(
                    f,
                    "{value} exceeds the variable byte integer maximum of 268435455"
                )
            }
            ZeroPacketId => write!(f, "packet identifier 0 where a non-zero one is required"),
            BufferTooSmall { needed, available } => {
                write!(
                    f,
                    "the packet needs {needed} bytes but the buffer has room for {available}"
                )
            }
            Invalid(what) => write!(f, "cannot encode: {what}"),
        }
    }
}

impl std::error::Error for EncodeError {}
