//! The record format: what each record kind holds, written (`append_*`) and read back
//! (`records`, the decoders).

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

use crate::protocol::{self, Packet, Properties, ProtocolVersion, QoS};

use super::RetainedMessage;

/// Bytes before a record's body: kind, length, CRC32C.
pub const RECORD_HEADER: usize = 9;

/// The largest body a record may have: a PUBLISH of `packet_size_max`'s ceiling with room.
pub(super) const RECORD_BODY_MAX: usize = 300 << 20;

/// A PUBLISH kept in a record is decoded with this size bound (the MQTT maximum).
const PACKET_SIZE_MAX: u32 = 268_435_460;

/// What a record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A retained message set (or deleted: empty payload). Body: wall-clock ns (u64 LE), the
    /// Message Expiry as unix seconds (u64 LE, 0 = none), the message as an MQTT 5 PUBLISH
    /// with retain 1 (packet id 1 at QoS 1/2), its properties as received.
    Retained = 1,
    /// A persistent session exists (created, resumed, its expiry changed, or its client
    /// left). Body: client id, protocol level (u8), Session Expiry Interval (u32 LE), then when
    /// its client left as unix ms (u64 LE; 0 while connected). Logs written before that field
    /// end after the interval: read as 0 (the start is then the leaving time). Then, when the
    /// record knows it (a CONNECT's, a snapshot's), the username its client connected with: 0
    /// (none) or 1 and the username; absent, the last one said holds (the ACL's rules of a
    /// restored session are resolved with it).
    Session = 2,
    /// The session ended (expired, discarded by a clean start, or made clean). Body: client id.
    SessionEnd = 3,
    /// A subscription of a persistent session (replacing one on the same filter). Body:
    /// client id, filter, options as the MQTT 5 options byte, Subscription Identifier (u32
    /// LE, 0 = none).
    Subscribe = 4,
    /// Body: client id, filter.
    Unsubscribe = 5,
    /// A QoS 1/2 message owed to a persistent session. Body: client id, then a message as in
    /// a retained record (with its own retain flag), whose time is 0 unless it has a Message
    /// Expiry (nothing reads it: a clock read per message saved).
    Message = 6,
    /// The client acknowledged one: body client id, `message_id` (u32 LE).
    Delivered = 7,
    /// The client sent PUBREC for an outbound QoS 2 message: it is no longer owed, a PUBREL
    /// for `packet_id` is. Body: client id, packet id (u16 LE), then the message's
    /// `message_id` (u32 LE; absent in a snapshot, where the message is already gone).
    Released = 8,
    /// PUBCOMP for an outbound QoS 2 flow: body client id, packet id (u16 LE).
    Completed = 9,
    /// An inbound QoS 2 PUBLISH was taken (delivered, PUBREC owed): a re-send with this id
    /// before the PUBREL is not delivered again. Body: client id, packet id (u16 LE).
    IncomingQos2 = 10,
    /// PUBREL for an inbound QoS 2 id: the client may reuse it. Body as `IncomingQos2`.
    IncomingReleased = 11,
    /// The will of a persistent session's connection (replacing any). Body: client id, Will
    /// Delay Interval (u32 LE), the will as an MQTT 5 PUBLISH (packet id 1 at QoS 1/2) with
    /// its other properties (a Message Expiry Interval runs from when it is published).
    Will = 12,
    /// The will is gone: published, or discarded by a normal DISCONNECT or a CONNECT without
    /// one. Body: client id.
    WillEnd = 13,
    /// A QoS 2 message owed to a persistent session went out under `packet_id`: after a
    /// restart it is sent again under that id with DUP=1 [MQTT-4.4.0-1], so a receiver that
    /// already has it does not deliver it twice. Body: client id, packet id (u16 LE), the
    /// message's `message_id` (u32 LE).
    Sent = 14,
    /// The end of a batch (one write): a start keeps a log's records up to its last
    /// `Commit`, so the records one packet caused are there all or none after a crash that
    /// tore the batch. Empty body. A log without any (written before it existed) is kept
    /// whole up to its torn tail.
    Commit = 15,
    /// A QoS 2 message of the flow (publisher's client id, packet id) was queued for the
    /// persistent session, in this batch: a re-send of the flow's PUBLISH (DUP=1) after a
    /// crash is not delivered to the session again (`shard/exactly_once.rs`). Body: the
    /// session's client id, the publisher's client id, the packet id (u16 LE).
    Seen = 16,
    /// The publisher released the flow (PUBREL): the key is gone. Body as `Seen`.
    Unseen = 17,
}

impl Kind {
    pub(super) fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::Retained,
            2 => Kind::Session,
            3 => Kind::SessionEnd,
            4 => Kind::Subscribe,
            5 => Kind::Unsubscribe,
            6 => Kind::Message,
            7 => Kind::Delivered,
            8 => Kind::Released,
            9 => Kind::Completed,
            10 => Kind::IncomingQos2,
            11 => Kind::IncomingReleased,
            12 => Kind::Will,
            13 => Kind::WillEnd,
            14 => Kind::Sent,
            15 => Kind::Commit,
            16 => Kind::Seen,
            17 => Kind::Unseen,
            _ => return None,
        })
    }
}

/// What names a message owed to a session in its `Delivered` record.
pub fn message_id(topic: &str, payload: &[u8]) -> u32 {
    super::crc::crc32c_append(super::crc::crc32c(topic.as_bytes()), payload)
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads what `put_str` wrote.
pub(super) fn take_str<'a>(body: &mut &'a [u8]) -> Option<&'a str> {
    let len = u16::from_le_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(body.get(2..2 + len)?).ok()?;
    *body = &body[2 + len..];
    Some(s)
}

pub(super) fn take_u16(body: &mut &[u8]) -> Option<u16> {
    let value = u16::from_le_bytes(body.get(..2)?.try_into().ok()?);
    *body = &body[2..];
    Some(value)
}

pub(super) fn take_u32(body: &mut &[u8]) -> Option<u32> {
    let value = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    *body = &body[4..];
    Some(value)
}

/// A message as retained and queued records keep it: wall-clock ns (with `stamped`, else only
/// when it has a Message Expiry; 0 otherwise), Message Expiry as unix seconds (0: none), an
/// MQTT 5 PUBLISH.
fn put_message(
    out: &mut Vec<u8>,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    properties: Option<&Properties>,
    stamped: bool,
) {
    let interval = properties.and_then(|p| p.message_expiry_interval);
    let now_ns = if stamped || interval.is_some() {
        unix_ns()
    } else {
        0
    };
    let expiry_unix_secs = interval.map_or(0, |interval| {
        now_ns / 1_000_000_000 + u64::from(interval) + 1
    });
    out.extend_from_slice(&now_ns.to_le_bytes());
    out.extend_from_slice(&expiry_unix_secs.to_le_bytes());
    let packet_id = if qos == QoS::AtMostOnce { 0 } else { 1 };
    // Nothing the broker accepted fails to encode; a record that did would be refused by the
    // replay (a bad PUBLISH), so nothing unreadable is ever taken for stored.
    let _ = protocol::encode_publish(
        out,
        ProtocolVersion::V5,
        topic,
        payload,
        qos,
        retain,
        false,
        packet_id,
        properties,
    );
}

/// `left_unix_ms`: when the client left (0 while it is connected).
pub fn append_session(
    out: &mut Vec<u8>,
    client_id: &str,
    version: u8,
    expiry_secs: u32,
    left_unix_ms: u64,
) {
    append_record(out, Kind::Session, |body| {
        put_session(body, client_id, version, expiry_secs, left_unix_ms)
    });
}

/// `append_session` that also says the username the client connected with.
pub fn append_session_as(
    out: &mut Vec<u8>,
    client_id: &str,
    version: u8,
    expiry_secs: u32,
    left_unix_ms: u64,
    username: Option<&str>,
) {
    append_record(out, Kind::Session, |body| {
        put_session(body, client_id, version, expiry_secs, left_unix_ms);
        match username {
            Some(username) => {
                body.push(1);
                put_str(body, username);
            }
            None => body.push(0),
        }
    });
}

fn put_session(body: &mut Vec<u8>, client_id: &str, version: u8, expiry: u32, left_ms: u64) {
    put_str(body, client_id);
    body.push(version);
    body.extend_from_slice(&expiry.to_le_bytes());
    body.extend_from_slice(&left_ms.to_le_bytes());
}

pub fn append_session_end(out: &mut Vec<u8>, client_id: &str) {
    append_record(out, Kind::SessionEnd, |body| put_str(body, client_id));
}

pub fn append_subscribe(
    out: &mut Vec<u8>,
    client_id: &str,
    filter: &str,
    options: u8,
    subscription_id: u32,
) {
    append_record(out, Kind::Subscribe, |body| {
        put_str(body, client_id);
        put_str(body, filter);
        body.push(options);
        body.extend_from_slice(&subscription_id.to_le_bytes());
    });
}

pub fn append_unsubscribe(out: &mut Vec<u8>, client_id: &str, filter: &str) {
    append_record(out, Kind::Unsubscribe, |body| {
        put_str(body, client_id);
        put_str(body, filter);
    });
}

pub fn append_message(
    out: &mut Vec<u8>,
    client_id: &str,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    properties: Option<&Properties>,
) {
    append_record(out, Kind::Message, |body| {
        put_str(body, client_id);
        put_message(body, topic, payload, qos, retain, properties, false);
    });
}

pub fn append_delivered(out: &mut Vec<u8>, client_id: &str, message_id: u32) {
    append_record(out, Kind::Delivered, |body| {
        put_str(body, client_id);
        body.extend_from_slice(&message_id.to_le_bytes());
    });
}

/// PUBREC for an outbound QoS 2 message (`message_id: None` in a snapshot).
pub fn append_released(
    out: &mut Vec<u8>,
    client_id: &str,
    packet_id: u16,
    message_id: Option<u32>,
) {
    append_record(out, Kind::Released, |body| {
        put_str(body, client_id);
        body.extend_from_slice(&packet_id.to_le_bytes());
        if let Some(id) = message_id {
            body.extend_from_slice(&id.to_le_bytes());
        }
    });
}

/// Ends a batch (`Kind::Commit`).
pub fn append_commit(out: &mut Vec<u8>) {
    append_record(out, Kind::Commit, |_| {});
}

/// An outbound QoS 2 message went out under `packet_id`.
pub fn append_sent(out: &mut Vec<u8>, client_id: &str, packet_id: u16, message_id: u32) {
    append_record(out, Kind::Sent, |body| {
        put_str(body, client_id);
        body.extend_from_slice(&packet_id.to_le_bytes());
        body.extend_from_slice(&message_id.to_le_bytes());
    });
}

/// A record whose body is a client id and a packet id: `Completed`, `IncomingQos2`,
/// `IncomingReleased`.
pub fn append_packet_id(out: &mut Vec<u8>, kind: Kind, client_id: &str, packet_id: u16) {
    append_record(out, kind, |body| {
        put_str(body, client_id);
        body.extend_from_slice(&packet_id.to_le_bytes());
    });
}

/// `Seen` or `Unseen`: persistent session `client_id` holds (or no longer holds) the key of
/// `publisher`'s QoS 2 flow `packet_id`.
pub fn append_flow_key(
    out: &mut Vec<u8>,
    kind: Kind,
    client_id: &str,
    publisher: &str,
    packet_id: u16,
) {
    append_record(out, kind, |body| {
        put_str(body, client_id);
        put_str(body, publisher);
        body.extend_from_slice(&packet_id.to_le_bytes());
    });
}

/// The will of persistent session `client_id`'s connection.
pub fn append_will(out: &mut Vec<u8>, client_id: &str, will: &protocol::LastWill) {
    let delay_secs = will.properties.will_delay_interval.unwrap_or(0);
    let properties = will.properties.get().map(|p| Properties {
        will_delay_interval: None,
        ..p.clone()
    });
    append_record(out, Kind::Will, |body| {
        put_str(body, client_id);
        body.extend_from_slice(&delay_secs.to_le_bytes());
        let packet_id = if will.qos == QoS::AtMostOnce { 0 } else { 1 };
        // As in `put_message`: what the broker accepted encodes.
        let _ = protocol::encode_publish(
            body,
            ProtocolVersion::V5,
            &will.topic,
            &will.payload,
            will.qos,
            will.retain,
            false,
            packet_id,
            properties.as_ref().filter(|p| !p.is_empty()),
        );
    });
}

pub fn append_will_end(out: &mut Vec<u8>, client_id: &str) {
    append_record(out, Kind::WillEnd, |body| put_str(body, client_id));
}

/// Decodes a will record's body after the client id: (Will Delay Interval, the will).
pub(super) fn decode_will(mut body: &[u8]) -> Option<(u32, RetainedMessage)> {
    let delay_secs = take_u32(&mut body)?;
    let mut frame = BytesMut::from(body);
    let Ok(Some(Packet::Publish(publish))) =
        protocol::decode(&mut frame, ProtocolVersion::V5, PACKET_SIZE_MAX)
    else {
        return None;
    };
    let message = RetainedMessage {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties: publish.properties.get().cloned().map(Arc::new),
    };
    Some((delay_secs, message))
}

/// Appends one record to `out`; `body` writes the body after the header.
pub fn append_record(out: &mut Vec<u8>, kind: Kind, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    body(out);
    let len = (out.len() - start - RECORD_HEADER) as u32;
    out[start] = kind as u8;
    out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
    let crc = super::crc::crc32c_append(
        super::crc::crc32c(&out[start..start + 5]),
        &out[start + RECORD_HEADER..],
    );
    out[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
}

/// Wall-clock nanoseconds since the epoch (the order of retained records across logs).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Appends a retained message's record: set, or delete when `payload` is empty.
pub fn append_retained(
    out: &mut Vec<u8>,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    properties: Option<&Properties>,
) {
    append_record(out, Kind::Retained, |body| {
        put_message(body, topic, payload, qos, true, properties, true)
    });
}

/// A record read back: its kind, body, and where it starts in its file.
pub(super) struct Record<'a> {
    pub(super) kind: Kind,
    pub(super) body: &'a [u8],
    pub(super) offset: usize,
}

/// The records of one log up to its end or its torn tail; an error for corruption.
pub(super) fn records<'a>(bytes: &'a [u8], path: &Path) -> Result<Vec<Record<'a>>, String> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let corrupt = |what: &str| {
            format!(
                "persistence log {} is corrupt at offset {offset}: {what}; move the file \
                 away (or truncate it at that offset) to start without what follows",
                path.display()
            )
        };
        let torn = rest.len() < RECORD_HEADER || rest.iter().all(|&b| b == 0);
        if torn {
            break;
        }
        let len = u32::from_le_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
        if len > RECORD_BODY_MAX {
            return Err(corrupt("record length out of range"));
        }
        let Some(record) = rest.get(..RECORD_HEADER + len) else {
            break; // torn: the write stopped inside this record
        };
        let crc = u32::from_le_bytes(record[5..9].try_into().expect("4 bytes"));
        let actual =
            super::crc::crc32c_append(super::crc::crc32c(&record[..5]), &record[RECORD_HEADER..]);
        if crc != actual {
            if record.len() == rest.len() {
                break; // torn: the last record, half written
            }
            return Err(corrupt("bad CRC32C, with records after it"));
        }
        let Some(kind) = Kind::from_u8(record[0]) else {
            return Err(corrupt(&format!(
                "unknown record kind {} (written by a newer ringmq?)",
                record[0]
            )));
        };
        records.push(Record {
            kind,
            body: &record[RECORD_HEADER..],
            offset,
        });
        offset += record.len();
    }
    // A batch is whole or not at all: what follows the last commit was torn off with it.
    if let Some(last) = records.iter().rposition(|r| r.kind == Kind::Commit) {
        records.truncate(last + 1);
    }
    Ok(records)
}

/// Decodes a retained record's body: (time, expiry, message).
pub(super) fn decode_retained(body: &[u8]) -> Option<(u64, u64, RetainedMessage)> {
    let time_ns = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let expiry_unix_secs = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    let mut frame = BytesMut::from(body.get(16..)?);
    let Ok(Some(Packet::Publish(publish))) =
        protocol::decode(&mut frame, ProtocolVersion::V5, PACKET_SIZE_MAX)
    else {
        return None;
    };
    let mut properties = publish.properties.get().cloned();
    if expiry_unix_secs != 0 {
        let left_secs = expiry_unix_secs.saturating_sub(unix_ns() / 1_000_000_000);
        if let Some(p) = properties.as_mut() {
            p.message_expiry_interval = Some(left_secs.min(u64::from(u32::MAX)) as u32);
        }
    }
    let message = RetainedMessage {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties: properties.map(Arc::new),
    };
    Some((time_ns, expiry_unix_secs, message))
}

/// The `message_id` of a record's PUBLISH (MQTT 5, as `put_message` writes it), read in
/// place: the replay of a running shard's log meets every message, and decoding each would
/// cost as much as the log's writing did.
pub(super) fn publish_id(publish: &[u8]) -> Option<u32> {
    let qos = (*publish.first()? >> 1) & 3;
    let (remaining, mut at) = varint(publish, 1)?;
    let packet = publish.get(..at.checked_add(remaining)?)?;
    let topic_len = u16::from_be_bytes(packet.get(at..at + 2)?.try_into().ok()?) as usize;
    at += 2;
    let topic = packet.get(at..at + topic_len)?;
    at += topic_len + if qos > 0 { 2 } else { 0 };
    let (properties_len, after) = varint(packet, at)?;
    let payload = packet.get(after.checked_add(properties_len)?..)?;
    Some(super::crc::crc32c_append(
        super::crc::crc32c(topic),
        payload,
    ))
}

/// An MQTT variable byte integer at `at`: (value, offset after it).
fn varint(bytes: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let mut value = 0;
    for shift in 0..4 {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= usize::from(byte & 0x7F) << (7 * shift);
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}
