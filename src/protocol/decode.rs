//! Bytes in, packets out. `decode` splits one whole packet off the receive buffer as a frozen
//! `Bytes` and slices every string and payload out of it, so a decoded PUBLISH shares the receive
//! buffer instead of copying it (`in_place.rs` reads a PUBLISH without taking any handle). Every
//! read is bounds-checked through `Reader`; no input can make this module panic, only return a
//! `DecodeError`.

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

use super::error::DecodeError;
use super::header::{check_first_byte, fixed_header, read_var_int, VarInt};
use super::packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, ProtocolVersion, PubAck, Publish, QoS,
    SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use super::properties::{Properties, Props};
use super::reason::ReasonCode;

/// Takes one whole packet off the front of `buf`, advancing it; `Ok(None)` when `buf` ends
/// inside a packet (then `buf` is untouched: wait for more bytes).
///
/// `version` is the connection's negotiated version. A CONNECT is parsed by its own protocol
/// level, whatever `version` says. The size limit is checked from the fixed header, before the
/// body is waited for, and the type and flags from the first byte alone. After an error the
/// stream cannot be resynchronised: close the connection (with `err.reason_code()` where the
/// version allows).
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    packet_size_max: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some((first, header_len, size)) = frame_at(buf, version, packet_size_max)? else {
        return Ok(None);
    };
    // Results are returned whole rather than re-wrapped: a `Packet` is 80 bytes, and every
    // re-wrapping is a copy on the hot path.
    let body = buf.get(header_len..size).unwrap_or_default();
    match decode_short(first, body) {
        Ok(None) => {}
        result => {
            buf.advance(size);
            return result;
        }
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header_len);
    decode_body(first, frame, version)
}

/// The whole packet at the front of `buf`: its first byte (type and flags checked), the fixed
/// header's length and the packet's size; `Ok(None)` while it is incomplete.
#[inline(always)]
pub(super) fn frame_at(
    buf: &[u8],
    version: ProtocolVersion,
    packet_size_max: u32,
) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first, version)?;
    let Some((header_len, size)) = fixed_header(buf, packet_size_max)? else {
        return Ok(None);
    };
    if buf.len() < size {
        return Ok(None);
    }
    Ok(Some((first, header_len, size)))
}

/// The protocol level of the CONNECT at the front of `buf`, read from its first bytes without
/// the rest of the packet (an oversized CONNECT is never buffered, yet an MQTT 5 one is owed
/// CONNACK 0x95). `Ok(None)`: more bytes are needed to tell; `Err(())`: not a CONNECT with the
/// protocol name "MQTT" or "MQIsdp".
#[allow(clippy::result_unit_err)]
pub fn connect_protocol_level(buf: &[u8]) -> Result<Option<u8>, ()> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(());
    }
    // The remaining length: up to 4 bytes, the last without its high bit.
    let Some(length_len) = buf[1..].iter().take(4).position(|b| b & 0x80 == 0) else {
        return if buf.len() > 4 { Err(()) } else { Ok(None) };
    };
    let variable = &buf[2 + length_len..];
    let name_len = match variable {
        [0, 4, ..] => 4,
        [0, 6, ..] => 6,
        [_, _, ..] => return Err(()),
        _ => return Ok(None),
    };
    let Some(&level) = variable.get(2 + name_len) else {
        return Ok(None);
    };
    match &variable[2..2 + name_len] {
        b"MQTT" | b"MQIsdp" => Ok(Some(level)),
        _ => Err(()),
    }
}

/// The most frequent small packets (acks without properties, pings, a bare DISCONNECT) hold
/// nothing to share with the receive buffer: parsed from the slice, they skip the split and the
/// reference counting a frozen frame costs. `Ok(None)`: not one of them, take the general path
/// (which gives the same result for these bytes, only slower).
#[inline(always)]
pub(super) fn decode_short(first: u8, body: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let packet = match (first >> 4, body) {
        (4..=7, &[high, low]) => {
            let packet_id = u16::from_be_bytes([high, low]);
            if packet_id == 0 {
                return Err(DecodeError::ZeroPacketId);
            }
            let ack = PubAck::new(packet_id);
            match first >> 4 {
                4 => Packet::PubAck(ack),
                5 => Packet::PubRec(ack),
                6 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        (12, &[]) => Packet::PingReq,
        (13, &[]) => Packet::PingResp,
        (14, &[]) => Packet::Disconnect(Disconnect::default()),
        _ => return Ok(None),
    };
    // Flags were checked from the first byte already; every version reads these alike.
    Ok(Some(packet))
}

/// Decodes a packet's variable header and payload (`body`, exactly the remaining length).
#[inline(always)]
pub(super) fn decode_body(
    first: u8,
    body: Bytes,
    version: ProtocolVersion,
) -> Result<Option<Packet>, DecodeError> {
    let mut r = Reader::new(body);
    let v5 = version.is_v5();
    let packet = match first >> 4 {
        1 => Packet::Connect(Box::new(decode_connect(&mut r)?)),
        2 => Packet::ConnAck(decode_connack(&mut r, v5)?),
        3 => Packet::Publish(decode_publish(&mut r, first & 0x0F, v5)?),
        4 => Packet::PubAck(decode_ack(&mut r, v5, PUBACK_CODES)?),
        5 => Packet::PubRec(decode_ack(&mut r, v5, PUBACK_CODES)?),
        6 => Packet::PubRel(decode_ack(&mut r, v5, PUBREL_CODES)?),
        7 => Packet::PubComp(decode_ack(&mut r, v5, PUBREL_CODES)?),
        8 => Packet::Subscribe(decode_subscribe(&mut r, v5)?),
        9 => Packet::SubAck(decode_suback(&mut r, v5)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?),
        11 => Packet::UnsubAck(decode_unsuback(&mut r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(decode_disconnect(&mut r, v5)?),
        15 if v5 => Packet::Auth(decode_auth(&mut r)?),
        packet_type => return Err(DecodeError::InvalidPacketType(packet_type)),
    };
    // The declared remaining length must be exactly what the fields consumed.
    r.finish()?;
    Ok(Some(packet))
}

// Reason codes each packet may carry (MQTT 5, the tables in 3.x.2.1).
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// PUBACK and PUBREC.
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// PUBREL and PUBCOMP.
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
/// 3.1.1 SUBACK return codes [MQTT-3.9.3-2].
const SUBACK_CODES_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn reason_code(byte: u8, allowed: &[u8]) -> Result<ReasonCode, DecodeError> {
    if !allowed.contains(&byte) {
        return Err(DecodeError::InvalidReasonCode(byte));
    }
    ReasonCode::from_u8(byte).ok_or(DecodeError::InvalidReasonCode(byte))
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    // [MQTT-3.1.2-1] [MQTT-3.1.2-2]; 3.1 called itself "MQIsdp", level 3.
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT" | b"MQIsdp", _) => return Err(DecodeError::UnsupportedProtocolVersion { level }),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    let username_flag = flags & 0x80 != 0;
    let password_flag = flags & 0x40 != 0;
    let will_retain = flags & 0x20 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_flag = flags & 0x04 != 0;
    let clean_start = flags & 0x02 != 0;
    // [MQTT-3.1.2-3] The reserved bit must be 0.
    if flags & 0x01 != 0 {
        return Err(DecodeError::InvalidConnectFlags(flags));
    }
    // [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] No will: will QoS and retain are 0.
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::InvalidConnectFlags(flags));
    }
    // [MQTT-3.1.2-14]
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS)?;
    // [MQTT-3.1.2-22] 3.1.x: a password needs a user name. MQTT 5 allows one alone.
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::InvalidConnectFlags(flags));
    }
    let keepalive_secs = r.u16()?;
    let properties = if v5 {
        decode_properties(r, ctx::CONNECT)?
    } else {
        Props::NONE
    };
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::ProtocolError(
            "authentication data without a method",
        ));
    }
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            decode_properties(r, ctx::WILL)?
        } else {
            Props::NONE
        };
        let topic = r.topic_name()?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopicName);
        }
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keepalive_secs,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    // [MQTT-3.2.2-1] Bits 7-1 are reserved.
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::MalformedPacket(
            "CONNACK flags set reserved bits",
        ));
    }
    let byte = r.u8()?;
    let code = if v5 {
        reason_code(byte, CONNACK_CODES)?
    } else {
        // The 3.1.x return codes 0-5 (3.1.1 table 3.1), mapped as `ConnAck::code` documents.
        match byte {
            0 => ReasonCode::Success,
            1 => ReasonCode::UnsupportedProtocolVersion,
            2 => ReasonCode::ClientIdentifierNotValid,
            3 => ReasonCode::ServerUnavailable,
            4 => ReasonCode::BadUserNameOrPassword,
            5 => ReasonCode::NotAuthorized,
            _ => return Err(DecodeError::InvalidReasonCode(byte)),
        }
    };
    let properties = if v5 {
        decode_properties(r, ctx::CONNACK)?
    } else {
        Props::NONE
    };
    Ok(ConnAck {
        session_present: ack_flags & 0x01 != 0,
        code,
        properties,
    })
}

fn decode_publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let topic = r.topic_name()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = if v5 {
        decode_properties(r, ctx::PUBLISH)?
    } else {
        Props::NONE
    };
    // [MQTT-4.7.3-1]; MQTT 5 3.3.2.1: empty only when a Topic Alias names the topic.
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicName);
    }
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP.
fn decode_ack(r: &mut Reader, v5: bool, codes: &[u8]) -> Result<PubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    if !v5 {
        return Ok(PubAck::new(packet_id));
    }
    let (code, properties) = decode_reason_and_properties(r, codes, ctx::PUBACK)?;
    Ok(PubAck {
        packet_id,
        code,
        properties,
    })
}

/// The optional tail of MQTT 5 acks, DISCONNECT and AUTH: with nothing left the reason is
/// Success and there are no properties; a reason code alone means no properties
/// (3.4.2.1, 3.14.2.1, 3.15.2.1).
fn decode_reason_and_properties(
    r: &mut Reader,
    codes: &[u8],
    context: u16,
) -> Result<(ReasonCode, Props), DecodeError> {
    if r.is_empty() {
        return Ok((ReasonCode::Success, Props::NONE));
    }
    let code = reason_code(r.u8()?, codes)?;
    if r.is_empty() {
        return Ok((code, Props::NONE));
    }
    Ok((code, decode_properties(r, context)?))
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        decode_properties(r, ctx::SUBSCRIBE)?
    } else {
        Props::NONE
    };
    // [MQTT-3.8.3-3]
    if r.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        // Filter syntax (wildcard placement, `$share`) is the topic module's: MQTT 5 answers a
        // bad filter with SUBACK 0x8F rather than closing the connection.
        let filter = r.string()?;
        let options = subscription_options(r.u8()?, v5)?;
        filters.push((filter, options));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn subscription_options(byte: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    // [MQTT-3-8.3-4] (3.1.1: only the QoS bits) [MQTT-3.8.3-5] (MQTT 5: bits 6 and 7).
    let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
    if byte & reserved != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions(byte));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let retain_handling = (byte >> 4) & 0b11;
    if retain_handling == 3 {
        return Err(DecodeError::InvalidRetainHandling);
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let (properties, allowed) = if v5 {
        (decode_properties(r, ctx::SUBACK)?, SUBACK_CODES)
    } else {
        (Props::NONE, SUBACK_CODES_V3)
    };
    let codes = reason_codes(r, allowed)?;
    Ok(SubAck {
        packet_id,
        codes,
        properties,
    })
}

/// One reason code per filter, at least one.
fn reason_codes(r: &mut Reader, allowed: &[u8]) -> Result<Vec<ReasonCode>, DecodeError> {
    if r.is_empty() {
        return Err(DecodeError::ProtocolError(
            "an acknowledgement without reason codes",
        ));
    }
    let mut codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        codes.push(reason_code(r.u8()?, allowed)?);
    }
    Ok(codes)
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        decode_properties(r, ctx::UNSUBSCRIBE)?
    } else {
        Props::NONE
    };
    // [MQTT-3.10.3-2]
    if r.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    if !v5 {
        return Ok(UnsubAck {
            packet_id,
            codes: Vec::new(),
            properties: Props::NONE,
        });
    }
    let properties = decode_properties(r, ctx::UNSUBACK)?;
    let codes = reason_codes(r, UNSUBACK_CODES)?;
    Ok(UnsubAck {
        packet_id,
        codes,
        properties,
    })
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    if !v5 {
        return Ok(Disconnect::default());
    }
    let (code, properties) = decode_reason_and_properties(r, DISCONNECT_CODES, ctx::DISCONNECT)?;
    Ok(Disconnect { code, properties })
}

fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let (code, properties) = decode_reason_and_properties(r, AUTH_CODES, ctx::AUTH)?;
    Ok(Auth { code, properties })
}

/// Where a property may appear: one bit per packet type (and the will), table 2.2.2.2.
pub(crate) mod ctx {
    pub const CONNECT: u16 = 1 << 0;
    pub const CONNACK: u16 = 1 << 1;
    pub const PUBLISH: u16 = 1 << 2;
    pub const WILL: u16 = 1 << 3;
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    pub const PUBACK: u16 = 1 << 4;
    pub const SUBSCRIBE: u16 = 1 << 5;
    pub const SUBACK: u16 = 1 << 6;
    pub const UNSUBSCRIBE: u16 = 1 << 7;
    pub const UNSUBACK: u16 = 1 << 8;
    pub const DISCONNECT: u16 = 1 << 9;
    pub const AUTH: u16 = 1 << 10;
    pub const ALL: u16 = (1 << 11) - 1;

    /// The packets property `id` may appear on; `None` for an undefined identifier.
    pub fn allowed(id: u8) -> Option<u16> {
        Some(match id {
            0x01 | 0x02 | 0x03 | 0x08 | 0x09 => PUBLISH | WILL,
            0x0B => PUBLISH | SUBSCRIBE,
            0x11 => CONNECT | CONNACK | DISCONNECT,
            0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => CONNACK,
            0x15 | 0x16 => CONNECT | CONNACK | AUTH,
            0x17 | 0x19 => CONNECT,
            0x18 => WILL,
            0x1C => CONNACK | DISCONNECT,
            0x1F => CONNACK | PUBACK | SUBACK | UNSUBACK | DISCONNECT | AUTH,
            0x21 | 0x22 | 0x27 => CONNECT | CONNACK,
            0x23 => PUBLISH,
            0x26 => ALL,
            _ => return None,
        })
    }
}

/// Reads a property length and the properties it covers, refusing any property not allowed in
/// `context`, any duplicate (but User Property, and Subscription Identifier on PUBLISH), and any
/// value out of range.
fn decode_properties(r: &mut Reader, context: u16) -> Result<Props, DecodeError> {
    // Most packets carry none: a zero length is one byte, and no slice of the buffer is taken
    // (a `Bytes` slice costs a reference count both ways).
    if r.bytes.first() == Some(&0) {
        r.bytes.advance(1);
        return Ok(Props::NONE);
    }
    let len = r.var_int()? as usize;
    let block = r.take(len)?;
    if block.is_empty() {
        return Ok(Props::NONE);
    }
    let mut p = Reader {
        bytes: block,
        short: DecodeError::MalformedPacket("a property runs past the property length"),
    };
    let mut props = Properties::default();
    while !p.is_empty() {
        // Identifiers are variable byte integers, but every defined one fits in one byte, so a
        // byte with the continuation bit is an unknown identifier.
        let id = p.u8()?;
        let allowed = ctx::allowed(id).ok_or(DecodeError::UnknownProperty(id))?;
        if allowed & context == 0 {
            return Err(DecodeError::PropertyNotAllowed { id });
        }
        match id {
            0x01 => set(&mut props.payload_format_indicator, p.boolean(id)?, id)?,
            0x02 => set(&mut props.message_expiry_interval, p.u32()?, id)?,
            0x03 => set(&mut props.content_type, p.string()?, id)?,
            // [MQTT-3.3.2-14] The Response Topic is a topic name: no wildcards.
            0x08 => set(&mut props.response_topic, p.topic_name()?, id)?,
            0x09 => set(&mut props.correlation_data, p.binary()?, id)?,
            0x0B => {
                let value = p.var_int()?;
                if value == 0 {
                    return Err(DecodeError::InvalidPropertyValue { id });
                }
                // Several on a PUBLISH to a subscriber; at most one on SUBSCRIBE.
                if context != ctx::PUBLISH && !props.subscription_identifiers.is_empty() {
                    return Err(DecodeError::DuplicateProperty(id));
                }
                props.subscription_identifiers.push(value);
            }
            0x11 => set(&mut props.session_expiry_interval, p.u32()?, id)?,
            0x12 => set(&mut props.assigned_client_identifier, p.string()?, id)?,
            0x13 => set(&mut props.server_keep_alive, p.u16()?, id)?,
            0x15 => set(&mut props.authentication_method, p.string()?, id)?,
            0x16 => set(&mut props.authentication_data, p.binary()?, id)?,
            0x17 => set(&mut props.request_problem_information, p.boolean(id)?, id)?,
            0x18 => set(&mut props.will_delay_interval, p.u32()?, id)?,
            0x19 => set(&mut props.request_response_information, p.boolean(id)?, id)?,
            0x1A => set(&mut props.response_information, p.string()?, id)?,
            0x1C => set(&mut props.server_reference, p.string()?, id)?,
            0x1F => set(&mut props.reason_string, p.string()?, id)?,
            0x21 => set(&mut props.receive_maximum, p.non_zero_u16(id)?, id)?,
            0x22 => set(&mut props.topic_alias_maximum, p.u16()?, id)?,
            // [MQTT-3.3.2-8] Topic Alias 0 is not permitted.
            0x23 => set(&mut props.topic_alias, p.non_zero_u16(id)?, id)?,
            0x24 => set(&mut props.maximum_qos, p.boolean(id)?, id)?,
            0x25 => set(&mut props.retain_available, p.boolean(id)?, id)?,
            0x26 => {
                let name = p.string()?;
                let value = p.string()?;
                props.user_properties.push((name, value));
            }
            0x27 => {
                let value = p.u32()?;
                if value == 0 {
                    return Err(DecodeError::InvalidPropertyValue { id });
                }
                set(&mut props.maximum_packet_size, value, id)?;
            }
            0x28 => set(
                &mut props.wildcard_subscription_available,
                p.boolean(id)?,
                id,
            )?,
            0x29 => set(
                &mut props.subscription_identifier_available,
                p.boolean(id)?,
                id,
            )?,
            0x2A => set(&mut props.shared_subscription_available, p.boolean(id)?, id)?,
            _ => return Err(DecodeError::UnknownProperty(id)),
        }
    }
    Ok(Props::from(props))
}

fn set<T>(slot: &mut Option<T>, value: T, id: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

/// A bounds-checked cursor over one packet's bytes. Running out yields `short`: the remaining
/// length was too short for the packet, or a property overran the property length.
struct Reader {
    bytes: Bytes,
    short: DecodeError,
}

impl Reader {
    fn new(bytes: Bytes) -> Reader {
        Reader {
            bytes,
            short: DecodeError::RemainingLengthTooShort,
        }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.bytes.len() < n {
            return Err(self.short);
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.bytes.get_u8())
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.bytes.get_u16())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.bytes.get_u32())
    }

    fn var_int(&mut self) -> Result<u32, DecodeError> {
        match read_var_int(&self.bytes) {
            VarInt::Value(value, len) => {
                self.bytes.advance(len);
                Ok(value)
            }
            VarInt::Incomplete => Err(self.short),
            VarInt::Malformed => Err(DecodeError::MalformedPacket(
                "a variable byte integer takes more than 4 bytes",
            )),
        }
    }

    /// [MQTT-2.3.1-1] Packet identifiers, where present, are non-zero.
    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    fn boolean(&mut self, id: u8) -> Result<u8, DecodeError> {
        match self.u8()? {
            value @ (0 | 1) => Ok(value),
            _ => Err(DecodeError::InvalidPropertyValue { id }),
        }
    }

    fn non_zero_u16(&mut self, id: u8) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::InvalidPropertyValue { id }),
            value => Ok(value),
        }
    }

    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.bytes.split_to(n))
    }

    /// Binary data: a two-byte length, then that many bytes (1.5.6).
    fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 encoded string (1.5.4): well-formed, without U+0000 [MQTT-1.5.3-1/2].
    fn string(&mut self) -> Result<ByteString, DecodeError> {
        let bytes = self.binary()?;
        checked_string(bytes, false)
    }

    /// A topic name: a string without wildcards [MQTT-3.3.2-2]. Emptiness is the caller's to
    /// judge (a topic alias may stand in).
    fn topic_name(&mut self) -> Result<ByteString, DecodeError> {
        let bytes = self.binary()?;
        checked_string(bytes, true)
    }

    /// Everything left: a PUBLISH payload.
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if !self.bytes.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(())
    }
}

/// Validates a string field; with `topic_name`, refuses wildcards too. The bytes each rule looks
/// for (U+0000, `#` 0x23, `+` 0x2B) all sort below 0x2C, which topics rarely hold, so one word-wide
/// pass (`scan`) clears most strings and only the rest are searched byte by byte.
fn checked_string(bytes: Bytes, topic_name: bool) -> Result<ByteString, DecodeError> {
    checked_str(&bytes, topic_name)?;
    // SAFETY: `checked_str` found the bytes valid UTF-8.
    Ok(unsafe { ByteString::from_bytes_unchecked(bytes) })
}

/// `checked_string` in place. An all-ASCII string (the usual topic) is valid UTF-8 without
/// `from_utf8`: the scan that looks for the bytes below 0x2C tells it too.
pub(super) fn checked_str(bytes: &[u8], topic_name: bool) -> Result<&str, DecodeError> {
    let Scan { below_0x2c, ascii } = scan(bytes);
    if below_0x2c && bytes.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    let string = if ascii {
        // SAFETY: ASCII is UTF-8.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    } else {
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?
    };
    if topic_name && below_0x2c && bytes.iter().any(|&b| b == b'+' || b == b'#') {
        return Err(DecodeError::WildcardInTopicName);
    }
    Ok(string)
}

/// What one pass over a string field found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scan {
    /// A byte below 0x2C: U+0000, `#` or `+` may be there.
    pub below_0x2c: bool,
    /// Every byte below 0x80.
    pub ascii: bool,
}

/// `Scan` eight bytes at a time: `hasless(x, n)` from Bit Twiddling Hacks (exact for n <= 128:
/// it never misses such a byte) and the words' high bits, accumulated over the string. A tail
/// is read as the last eight bytes (overlapping the words already read), or, in a string
/// shorter than a word, padded with `a`: no byte-by-byte loop.
pub(crate) fn scan(bytes: &[u8]) -> Scan {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let word = |chunk: &[u8]| {
        let mut word = [b'a'; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        u64::from_le_bytes(word)
    };
    let (mut below, mut high) = (0u64, 0u64);
    let mut take = |x: u64| {
        below |= x.wrapping_sub(ONES * 0x2C) & !x;
        high |= x;
    };
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        take(word(chunk));
    }
    match (bytes.len(), chunks.remainder().is_empty()) {
        (_, true) => {}
        (0..8, false) => take(word(bytes)),
        (len, false) => take(word(&bytes[len - 8..])),
    }
    Scan {
        below_0x2c: below & HIGHS != 0,
        ascii: high & HIGHS == 0,
    }
}
