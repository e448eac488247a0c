//! Packets out, bytes in. Each packet's layout is written once, against a `Sink` that either
//! counts or writes: the counting pass gives the remaining length (and each property length)
//! before the writing pass, so sizes and bytes cannot disagree, nothing is written when a value
//! cannot be encoded, and `encoded_len` is the same code. `encode_publish` is the broker's hot
//! path: it encodes a message from borrowed parts, once, for many outboxes.

use bytes::BufMut;

use super::error::EncodeError;
use super::header::{var_int_len, VAR_INT_MAX};
use super::packet::{Connect, Packet, ProtocolVersion, PubAck, QoS, SubscriptionOptions};
use super::properties::Properties;
use super::reason::ReasonCode;

/// Appends `packet` to `out`. Under 3.1.x, properties and MQTT 5-only fields are left out and
/// `ConnAck::code` becomes a return code 0-5. A CONNECT is encoded for its own
/// `Connect::protocol`, whatever `version` says. On error nothing is written.
pub fn encode<B: BufMut>(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut B,
) -> Result<(), EncodeError> {
    if let Packet::Publish(p) = packet {
        return encode_publish(
            out,
            version,
            &p.topic,
            &p.payload,
            p.qos,
            p.retain,
            p.dup,
            p.packet_id,
            p.properties.get(),
        );
    }
    encode_frame(out, first_byte(packet), &PacketBody { packet, version })
}

/// Appends a PUBLISH built from borrowed parts, without a `Publish` value: the broker encodes a
/// message once per layout and copies the bytes into every outbox. `packet_id` is ignored for
/// QoS 0 and must be non-zero otherwise.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish<B: BufMut>(
    out: &mut B,
    version: ProtocolVersion,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    dup: bool,
    packet_id: u16,
    properties: Option<&Properties>,
) -> Result<(), EncodeError> {
    let parts = PublishParts {
        topic,
        payload,
        qos,
        retain,
        dup,
        packet_id,
        properties,
        topic_alias: None,
    };
    encode_publish_parts(out, version, &parts)
}

/// A PUBLISH as the broker sends it to one connection: borrowed parts, plus the MQTT 5 Topic
/// Alias that connection gets for the topic (written after `properties`, which must not hold
/// one: a message's properties are shared by every subscriber, an alias is one connection's).
#[derive(Clone, Copy, Debug)]
pub struct PublishParts<'a> {
    /// Empty only when `topic_alias` names the topic (MQTT 5, 3.3.2.1).
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    /// Ignored for QoS 0; non-zero otherwise.
    pub packet_id: u16,
    pub properties: Option<&'a Properties>,
    /// Left out under 3.1.x.
    pub topic_alias: Option<u16>,
}

/// `encode_publish` with a Topic Alias of the connection's own.
pub fn encode_publish_parts<B: BufMut>(
    out: &mut B,
    version: ProtocolVersion,
    parts: &PublishParts<'_>,
) -> Result<(), EncodeError> {
    // [MQTT-3.3.1-2]
    if parts.dup && parts.qos == QoS::AtMostOnce {
        return Err(EncodeError::Invalid("DUP set on a QoS 0 PUBLISH"));
    }
    if parts.properties.is_none() && parts.topic_alias.is_none() {
        return encode_plain_publish(out, version, parts);
    }
    encode_frame(
        out,
        publish_first_byte(parts),
        &PublishBody { version, parts },
    )
}

/// The PUBLISH every message without MQTT 5 properties is (most of them, and every 3.1.x one):
/// its length known by adding, the fixed header, topic length, packet id and empty property
/// length built in one small array, so the outbox takes three copies, not a counting pass and
/// a writing pass of one call per field. Accepts and refuses what `PublishBody` does.
fn encode_plain_publish<B: BufMut>(
    out: &mut B,
    version: ProtocolVersion,
    parts: &PublishParts<'_>,
) -> Result<(), EncodeError> {
    let topic = parts.topic.as_bytes();
    // [MQTT-4.7.3-1]: no Topic Alias here to name an empty topic.
    if topic.is_empty() {
        return Err(EncodeError::Invalid(
            "an empty topic name without a topic alias",
        ));
    }
    let topic_len =
        u16::try_from(topic.len()).map_err(|_| EncodeError::FieldTooLong { len: topic.len() })?;
    let with_id = parts.qos != QoS::AtMostOnce;
    // [MQTT-2.3.1-1]
    if with_id && parts.packet_id == 0 {
        return Err(EncodeError::ZeroPacketId);
    }
    let v5 = version.is_v5();
    let remaining_length =
        2 + topic.len() + 2 * usize::from(with_id) + usize::from(v5) + parts.payload.len();
    if remaining_length > VAR_INT_MAX as usize {
        return Err(EncodeError::PacketTooLarge { remaining_length });
    }
    let needed = 1 + var_int_len(remaining_length) + remaining_length;
    let available = out.remaining_mut();
    if available < needed {
        return Err(EncodeError::BufferTooSmall { needed, available });
    }
    // First byte, remaining length (at most 4 bytes), topic length.
    let mut head = [0u8; 7];
    head[0] = publish_first_byte(parts);
    let mut len = 1;
    let mut value = remaining_length;
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        head[len] = if value == 0 { byte } else { byte | 0x80 };
        len += 1;
        if value == 0 {
            break;
        }
    }
    head[len..len + 2].copy_from_slice(&topic_len.to_be_bytes());
    out.put_slice(&head[..len + 2]);
    out.put_slice(topic);
    // Packet id, then MQTT 5's zero property length.
    let mut tail = [0u8; 3];
    let mut tail_len = 0;
    if with_id {
        tail[..2].copy_from_slice(&parts.packet_id.to_be_bytes());
        tail_len = 2;
    }
    if v5 {
        tail_len += 1;
    }
    if tail_len > 0 {
        out.put_slice(&tail[..tail_len]);
    }
    out.put_slice(parts.payload);
    Ok(())
}

/// Bytes `encode_publish_parts` would append (fixed header included): what a client's Maximum
/// Packet Size is checked against before anything is written. Unspecified for a PUBLISH that
/// `encode_publish_parts` refuses.
pub fn publish_parts_len(version: ProtocolVersion, parts: &PublishParts<'_>) -> usize {
    let mut count = Count(0);
    let _ = PublishBody { version, parts }.write(&mut count);
    let remaining_length = count.0;
    1 + var_int_len(remaining_length) + remaining_length
}

fn publish_first_byte(parts: &PublishParts<'_>) -> u8 {
    0x30 | (u8::from(parts.dup) << 3) | ((parts.qos as u8) << 1) | u8::from(parts.retain)
}

/// Bytes `encode` would append for `packet` (fixed header included). Unspecified for a packet
/// that `encode` refuses.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let mut count = Count(0);
    // A refused packet has no length; the partial count is as good an answer as any.
    let _ = PacketBody { packet, version }.write(&mut count);
    let remaining_length = count.0;
    1 + var_int_len(remaining_length) + remaining_length
}

/// Bytes the properties take on the wire, without their length prefix (what a retained
/// message's properties weigh against `retained_bytes_max`). 0 for a set that cannot be encoded.
pub fn properties_len(properties: &Properties) -> usize {
    let mut count = Count(0);
    match write_property_list(&mut count, properties) {
        Ok(()) => count.0,
        Err(_) => 0,
    }
}

/// Counts the body, checks it fits the remaining length and `out`, then writes the packet.
fn encode_frame<B: BufMut, T: Body>(out: &mut B, first: u8, body: &T) -> Result<(), EncodeError> {
    let mut count = Count(0);
    body.write(&mut count)?;
    let remaining_length = count.0;
    if remaining_length > VAR_INT_MAX as usize {
        return Err(EncodeError::PacketTooLarge { remaining_length });
    }
    let needed = 1 + var_int_len(remaining_length) + remaining_length;
    let available = out.remaining_mut();
    if available < needed {
        return Err(EncodeError::BufferTooSmall { needed, available });
    }
    let mut sink = Out(out);
    sink.put_u8(first);
    write_var_int(&mut sink, remaining_length)?;
    body.write(&mut sink)
}

/// Where bytes go: counted (first pass) or written (second pass).
trait Sink {
    fn put(&mut self, bytes: &[u8]);

    fn put_u8(&mut self, value: u8) {
        self.put(&[value]);
    }

    fn put_u16(&mut self, value: u16) {
        self.put(&value.to_be_bytes());
    }

    fn put_u32(&mut self, value: u32) {
        self.put(&value.to_be_bytes());
    }
}

struct Count(usize);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

struct Out<'a, B>(&'a mut B);

impl<B: BufMut> Sink for Out<'_, B> {
    fn put(&mut self, bytes: &[u8]) {
        self.0.put_slice(bytes);
    }
}

/// A packet's variable header and payload.
trait Body {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError>;
}

struct PublishBody<'a> {
    version: ProtocolVersion,
    parts: &'a PublishParts<'a>,
}

impl Body for PublishBody<'_> {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        let v5 = self.version.is_v5();
        let p = self.parts;
        let alias = p
            .topic_alias
            .or_else(|| p.properties.and_then(|p| p.topic_alias));
        // [MQTT-4.7.3-1]; MQTT 5 3.3.2.1: empty only when a Topic Alias names the topic.
        if p.topic.is_empty() && !(v5 && alias.is_some()) {
            return Err(EncodeError::Invalid(
                "an empty topic name without a topic alias",
            ));
        }
        write_string(s, p.topic)?;
        if p.qos != QoS::AtMostOnce {
            write_packet_id(s, p.packet_id)?;
        }
        if v5 {
            write_publish_properties(s, p.properties, p.topic_alias)?;
        }
        s.put(p.payload);
        Ok(())
    }
}

/// A PUBLISH's properties and the connection's Topic Alias after them (any order is valid,
/// spec 2.2.2.2): the shared properties are not copied to add it.
fn write_publish_properties<S: Sink>(
    s: &mut S,
    properties: Option<&Properties>,
    topic_alias: Option<u16>,
) -> Result<(), EncodeError> {
    let Some(alias) = topic_alias else {
        return write_properties(s, properties);
    };
    // [MQTT-3.3.2-8] Never 0; and never twice.
    if alias == 0 {
        return Err(EncodeError::Invalid("topic alias 0"));
    }
    if properties.is_some_and(|p| p.topic_alias.is_some()) {
        return Err(EncodeError::Invalid("a second topic alias"));
    }
    let mut count = Count(3);
    if let Some(properties) = properties {
        write_property_list(&mut count, properties)?;
    }
    write_var_int(s, count.0)?;
    if let Some(properties) = properties {
        write_property_list(s, properties)?;
    }
    s.put_u8(0x23);
    s.put_u16(alias);
    Ok(())
}

struct PacketBody<'a> {
    packet: &'a Packet,
    version: ProtocolVersion,
}

impl Body for PacketBody<'_> {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        let version = self.version;
        let v5 = version.is_v5();
        match self.packet {
            Packet::Connect(connect) => write_connect(s, connect),
            Packet::ConnAck(ack) => {
                // MQTT 3.1 has no Session Present flag: the byte is reserved, 0.
                let present = ack.session_present && version != ProtocolVersion::V3_1;
                s.put_u8(u8::from(present));
                s.put_u8(if v5 {
                    ack.code as u8
                } else {
                    connack_return_code(ack.code)
                });
                if v5 {
                    write_properties(s, ack.properties.get())?;
                }
                Ok(())
            }
            Packet::Publish(p) => PublishBody {
                version,
                parts: &PublishParts {
                    topic: &p.topic,
                    payload: &p.payload,
                    qos: p.qos,
                    retain: p.retain,
                    dup: p.dup,
                    packet_id: p.packet_id,
                    properties: p.properties.get(),
                    topic_alias: None,
                },
            }
            .write(s),
            Packet::PubAck(ack)
            | Packet::PubRec(ack)
            | Packet::PubRel(ack)
            | Packet::PubComp(ack) => write_ack(s, ack, v5),
            Packet::Subscribe(sub) => {
                write_packet_id(s, sub.packet_id)?;
                if v5 {
                    write_properties(s, sub.properties.get())?;
                }
                // [MQTT-3.8.3-3]
                if sub.filters.is_empty() {
                    return Err(EncodeError::Invalid("SUBSCRIBE without a topic filter"));
                }
                for (filter, options) in &sub.filters {
                    write_string(s, filter)?;
                    s.put_u8(subscription_options(options, v5)?);
                }
                Ok(())
            }
            Packet::SubAck(ack) => {
                write_packet_id(s, ack.packet_id)?;
                if v5 {
                    write_properties(s, ack.properties.get())?;
                }
                for &code in &ack.codes {
                    s.put_u8(if v5 {
                        code as u8
                    } else {
                        suback_return_code(code)
                    });
                }
                Ok(())
            }
            Packet::Unsubscribe(unsub) => {
                write_packet_id(s, unsub.packet_id)?;
                if v5 {
                    write_properties(s, unsub.properties.get())?;
                }
                // [MQTT-3.10.3-2]
                if unsub.filters.is_empty() {
                    return Err(EncodeError::Invalid("UNSUBSCRIBE without a topic filter"));
                }
                for filter in &unsub.filters {
                    write_string(s, filter)?;
                }
                Ok(())
            }
            Packet::UnsubAck(ack) => {
                write_packet_id(s, ack.packet_id)?;
                if v5 {
                    write_properties(s, ack.properties.get())?;
                    for &code in &ack.codes {
                        s.put_u8(code as u8);
                    }
                }
                Ok(())
            }
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(disconnect) => {
                if v5 {
                    write_reason_and_properties(s, disconnect.code, disconnect.properties.get())?;
                }
                Ok(())
            }
            Packet::Auth(auth) => {
                if !v5 {
                    return Err(EncodeError::Invalid("AUTH exists only in MQTT 5"));
                }
                write_reason_and_properties(s, auth.code, auth.properties.get())
            }
        }
    }
}

fn first_byte(packet: &Packet) -> u8 {
    let flags = match packet {
        Packet::Publish(p) => (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain),
        // [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1]
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    ((packet.packet_type() as u8) << 4) | flags
}

fn write_connect<S: Sink>(s: &mut S, connect: &Connect) -> Result<(), EncodeError> {
    let protocol = connect.protocol;
    let v5 = protocol.is_v5();
    // [MQTT-3.1.2-22] 3.1.x: a password needs a user name.
    if !v5 && connect.password.is_some() && connect.username.is_none() {
        return Err(EncodeError::Invalid(
            "a 3.1.x CONNECT password without a user name",
        ));
    }
    let name: &str = if protocol == ProtocolVersion::V3_1 {
        "MQIsdp"
    } else {
        "MQTT"
    };
    write_string(s, name)?;
    s.put_u8(protocol as u8);
    let mut flags = u8::from(connect.clean_start) << 1;
    if let Some(will) = &connect.will {
        flags |= 0x04 | ((will.qos as u8) << 3) | (u8::from(will.retain) << 5);
    }
    if connect.password.is_some() {
        flags |= 0x40;
    }
    if connect.username.is_some() {
        flags |= 0x80;
    }
    s.put_u8(flags);
    s.put_u16(connect.keepalive_secs);
    if v5 {
        write_properties(s, connect.properties.get())?;
    }
    write_string(s, &connect.client_id)?;
    if let Some(will) = &connect.will {
        if v5 {
            write_properties(s, will.properties.get())?;
        }
        write_string(s, &will.topic)?;
        write_binary(s, &will.payload)?;
    }
    if let Some(username) = &connect.username {
        write_string(s, username)?;
    }
    if let Some(password) = &connect.password {
        write_binary(s, password)?;
    }
    Ok(())
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP; MQTT 5 in the shortest form that says it all.
fn write_ack<S: Sink>(s: &mut S, ack: &PubAck, v5: bool) -> Result<(), EncodeError> {
    write_packet_id(s, ack.packet_id)?;
    if v5 {
        write_reason_and_properties(s, ack.code, ack.properties.get())?;
    }
    Ok(())
}

/// The optional tail of MQTT 5 acks, DISCONNECT and AUTH: left out when the reason is Success
/// and there are no properties; the property length is left out when there are none.
fn write_reason_and_properties<S: Sink>(
    s: &mut S,
    code: ReasonCode,
    properties: Option<&Properties>,
) -> Result<(), EncodeError> {
    if properties.is_none() {
        if code != ReasonCode::Success {
            s.put_u8(code as u8);
        }
        return Ok(());
    }
    s.put_u8(code as u8);
    write_properties(s, properties)
}

/// 3.1.x CONNACK return codes 0-5, as `ConnAck::code` documents.
pub fn connack_return_code(code: ReasonCode) -> u8 {
    match code {
        ReasonCode::Success => 0,
        ReasonCode::UnsupportedProtocolVersion => 1,
        ReasonCode::ClientIdentifierNotValid => 2,
        ReasonCode::ServerUnavailable => 3,
        ReasonCode::BadUserNameOrPassword => 4,
        ReasonCode::NotAuthorized => 5,
        _ => 3,
    }
}

/// 3.1.1 SUBACK knows granted QoS 0-2 and failure 0x80 [MQTT-3.9.3-2].
fn suback_return_code(code: ReasonCode) -> u8 {
    match code {
        ReasonCode::Success | ReasonCode::GrantedQoS1 | ReasonCode::GrantedQoS2 => code as u8,
        _ => 0x80,
    }
}

fn subscription_options(options: &SubscriptionOptions, v5: bool) -> Result<u8, EncodeError> {
    let qos = options.qos as u8;
    if !v5 {
        return Ok(qos);
    }
    if options.retain_handling > 2 {
        return Err(EncodeError::Invalid("retain handling over 2"));
    }
    Ok(qos
        | (u8::from(options.no_local) << 2)
        | (u8::from(options.retain_as_published) << 3)
        | (options.retain_handling << 4))
}

fn write_packet_id<S: Sink>(s: &mut S, packet_id: u16) -> Result<(), EncodeError> {
    // [MQTT-2.3.1-1]
    if packet_id == 0 {
        return Err(EncodeError::ZeroPacketId);
    }
    s.put_u16(packet_id);
    Ok(())
}

fn write_var_int<S: Sink>(s: &mut S, value: usize) -> Result<(), EncodeError> {
    if value > VAR_INT_MAX as usize {
        return Err(EncodeError::PacketTooLarge {
            remaining_length: value,
        });
    }
    let mut value = value;
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            s.put_u8(byte);
            return Ok(());
        }
        s.put_u8(byte | 0x80);
    }
}

fn write_binary<S: Sink>(s: &mut S, bytes: &[u8]) -> Result<(), EncodeError> {
    let len =
        u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong { len: bytes.len() })?;
    s.put_u16(len);
    s.put(bytes);
    Ok(())
}

fn write_string<S: Sink>(s: &mut S, string: &str) -> Result<(), EncodeError> {
    write_binary(s, string.as_bytes())
}

/// The property length, then the properties (a zero length for `None`, without looking at any).
fn write_properties<S: Sink>(
    s: &mut S,
    properties: Option<&Properties>,
) -> Result<(), EncodeError> {
    let Some(properties) = properties else {
        s.put_u8(0);
        return Ok(());
    };
    let mut count = Count(0);
    write_property_list(&mut count, properties)?;
    write_var_int(s, count.0)?;
    if count.0 != 0 {
        write_property_list(s, properties)?;
    }
    Ok(())
}

/// Every property that is set, in identifier order. The encoder trusts the caller to set only
/// properties valid for the packet (the decoder enforces table 2.2.2.2 on the way in).
fn write_property_list<S: Sink>(s: &mut S, p: &Properties) -> Result<(), EncodeError> {
    fn byte<S: Sink>(s: &mut S, id: u8, value: Option<u8>) {
        if let Some(value) = value {
            s.put_u8(id);
            s.put_u8(value);
        }
    }
    fn two<S: Sink>(s: &mut S, id: u8, value: Option<u16>) {
        if let Some(value) = value {
            s.put_u8(id);
            s.put_u16(value);
        }
    }
    fn four<S: Sink>(s: &mut S, id: u8, value: Option<u32>) {
        if let Some(value) = value {
            s.put_u8(id);
            s.put_u32(value);
        }
    }
    fn string<S: Sink>(
        s: &mut S,
        id: u8,
        value: &Option<bytestring::ByteString>,
    ) -> Result<(), EncodeError> {
        if let Some(value) = value {
            s.put_u8(id);
            write_string(s, value)?;
        }
        Ok(())
    }
    fn binary<S: Sink>(s: &mut S, id: u8, value: &Option<bytes::Bytes>) -> Result<(), EncodeError> {
        if let Some(value) = value {
            s.put_u8(id);
            write_binary(s, value)?;
        }
        Ok(())
    }

    byte(s, 0x01, p.payload_format_indicator);
    four(s, 0x02, p.message_expiry_interval);
    string(s, 0x03, &p.content_type)?;
    string(s, 0x08, &p.response_topic)?;
    binary(s, 0x09, &p.correlation_data)?;
    for &id in &p.subscription_identifiers {
        if id == 0 {
            return Err(EncodeError::Invalid("subscription identifier 0"));
        }
        if id > VAR_INT_MAX {
            return Err(EncodeError::VarIntTooLarge(id));
        }
        s.put_u8(0x0B);
        write_var_int(s, id as usize)?;
    }
    four(s, 0x11, p.session_expiry_interval);
    string(s, 0x12, &p.assigned_client_identifier)?;
    two(s, 0x13, p.server_keep_alive);
    string(s, 0x15, &p.authentication_method)?;
    binary(s, 0x16, &p.authentication_data)?;
    byte(s, 0x17, p.request_problem_information);
    four(s, 0x18, p.will_delay_interval);
    byte(s, 0x19, p.request_response_information);
    string(s, 0x1A, &p.response_information)?;
    string(s, 0x1C, &p.server_reference)?;
    string(s, 0x1F, &p.reason_string)?;
    two(s, 0x21, p.receive_maximum);
    two(s, 0x22, p.topic_alias_maximum);
    two(s, 0x23, p.topic_alias);
    byte(s, 0x24, p.maximum_qos);
    byte(s, 0x25, p.retain_available);
    for (name, value) in &p.user_properties {
        s.put_u8(0x26);
        write_string(s, name)?;
        write_string(s, value)?;
    }
    four(s, 0x27, p.maximum_packet_size);
    byte(s, 0x28, p.wildcard_subscription_available);
    byte(s, 0x29, p.subscription_identifier_available);
    byte(s, 0x2A, p.shared_subscription_available);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the general encoder writes (or refuses) for `parts`.
    fn general(version: ProtocolVersion, parts: &PublishParts<'_>, room: usize) -> Vec<u8> {
        let mut buf = vec![0u8; room];
        let mut out = &mut buf[..];
        let result = encode_frame(
            &mut out,
            publish_first_byte(parts),
            &PublishBody { version, parts },
        );
        let left = out.len();
        match result {
            Ok(()) => buf[..room - left].to_vec(),
            Err(e) => format!("{e:?}").into_bytes(),
        }
    }

    fn plain(version: ProtocolVersion, parts: &PublishParts<'_>, room: usize) -> Vec<u8> {
        let mut buf = vec![0u8; room];
        let mut out = &mut buf[..];
        let result = encode_plain_publish(&mut out, version, parts);
        let left = out.len();
        match result {
            Ok(()) => buf[..room - left].to_vec(),
            Err(e) => format!("{e:?}").into_bytes(),
        }
    }

    #[test]
    fn the_plain_publish_path_writes_and_refuses_what_the_general_one_does() {
        let long_topic = "t".repeat(70_000);
        let payloads = [0usize, 1, 100, 121, 122, 16_370, 16_384, 200_000];
        let topics = ["a", "a/b/c", "", long_topic.as_str()];
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for topic in topics {
                for &size in &payloads {
                    let payload = vec![7u8; size];
                    for (qos, packet_id) in [
                        (QoS::AtMostOnce, 0),
                        (QoS::AtLeastOnce, 1),
                        (QoS::ExactlyOnce, 0xFFFF),
                        (QoS::AtLeastOnce, 0),
                    ] {
                        for (retain, dup) in [(false, false), (true, qos != QoS::AtMostOnce)] {
                            let parts = PublishParts {
                                topic,
                                payload: &payload,
                                qos,
                                retain,
                                dup,
                                packet_id,
                                properties: None,
                                topic_alias: None,
                            };
                            for room in [300_000, 10] {
                                assert_eq!(
                                    plain(version, &parts, room),
                                    general(version, &parts, room),
                                    "{version:?} topic {} payload {size} {qos:?} id \
                                     {packet_id} room {room}",
                                    topic.len()
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
