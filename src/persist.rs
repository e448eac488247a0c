//! Durability on disk (issue 10): one append-only log per shard, replayed at start.
//!
//! Layout of `[persistence] dir`: `CURRENT` names the live generation `N` (one line), and
//! `gen-N/shard-K.log` is shard K's log. Shared-nothing on disk as in memory: a shard appends
//! only to its own log, through its own io_uring (`shard/durable.rs`), one write (and, with
//! `sync = "ack"`, one fdatasync) per loop turn for every record of that turn.
//!
//! A record: kind (1 byte), body length (u32 LE), CRC32C (u32 LE) of kind, length and body,
//! then the body. At start every log of the live generation is read ([`open`]); the state they
//! describe is written as generation N + 1 (a snapshot: one record per live item, so a start
//! costs what the live state weighs, not what the history weighed), each file synced, and
//! `CURRENT` is switched to it by an atomic rename; only then is generation N removed. A crash
//! anywhere in between leaves `CURRENT` naming a complete generation. Because every log is
//! read by one replay, state re-homes by itself when `--shards` changed: the snapshot writes
//! each item into the log of the shard that now owns it.
//!
//! A running shard compacts its own log when it has grown past twice its live size
//! ([`Compactor`], `shard/durable.rs`: the log read back a slice at a time, each replayed as
//! it comes): `shard-K.compact` is written beside it and renamed over
//! it once complete and synced; a start ignores (and removes with the old generation) one left
//! by a crash before the rename.
//!
//! A torn tail (a crash in the middle of a write: a short record, or a bad CRC in the last
//! record, or zeros to the end of the file) is where the log ends; nothing after it was ever
//! acknowledged, because an ack that depends on a record waits for its write and fdatasync.
//! Every batch (one write) ends with a `Commit` record, and the replay stops at the last one:
//! a batch is kept whole or not at all, so the records one packet caused (a QoS 2 message
//! for a subscriber, its packet id, the publisher's id) never come back in part. A bad
//! record with valid-looking data after it is corruption, not a crash: the start fails,
//! naming the file and the offset, rather than silently dropping what follows.
//!
//! Recorded: retained messages (set and delete, with their MQTT 5 properties and Message
//! Expiry); persistent sessions (client id, protocol version, Session Expiry Interval), their
//! subscriptions (filter, options, Subscription Identifier) and the QoS 1/2 messages owed to
//! them (queued or in flight), each removed by the client's PUBACK (QoS 1) or PUBREC (QoS 2).
//! QoS 2 in both directions: an outbound message that went out is given its packet id
//! (`Sent`: a restart sends it again under that id, with DUP=1 [MQTT-4.4.0-1]), its PUBREC
//! replaces it by the PUBREL owed for the id (`Released`, removed by `Completed` at
//! PUBCOMP), and an inbound QoS 2 id is kept from its PUBLISH to its PUBREL (`IncomingQos2`,
//! `IncomingReleased`). The will of a persistent session's connection is kept until it is
//! published or discarded (`Will`, `WillEnd`); a restart ends the connection, so the will is
//! due its delay after the start.
//!
//! A message owed to a session is named in its removal by `message_id` (CRC32C of topic and
//! payload): two pending messages of one session with the same topic and payload are
//! interchangeable, so removing either is right.
//!
//! A persistent session's expiry runs on the wall clock across a restart: its `Session` record
//! is written again when its client leaves, with the time it left (unix ms). At start a
//! session whose Session Expiry Interval ran out while the broker was down is not restored
//! (its queued messages go with it; its will, due at the session's end, is published at the
//! start: `Restored::wills_due`); the others keep what is left of their interval
//! (`RestoredSession::away_ms`). A session whose client was connected when the broker stopped
//! was left at the start: the snapshot records the start as its leaving time.
//!
//! Retained messages replicate to every shard, but only the publisher's shard writes the
//! record; replay orders records of one topic from different logs by their wall-clock time
//! (a client's own publishes all come from its home shard's log, in order).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::protocol::{self, Packet, Properties, ProtocolVersion, QoS};

/// Bytes before a record's body: kind, length, CRC32C.
pub const RECORD_HEADER: usize = 9;

/// The largest body a record may have: a PUBLISH of `packet_size_max`'s ceiling with room.
const RECORD_BODY_MAX: usize = 300 << 20;

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
    /// end after the interval: read as 0 (the start is then the leaving time).
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
    /// a retained record (with its own retain flag).
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
}

impl Kind {
    fn from_u8(value: u8) -> Option<Kind> {
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
            _ => return None,
        })
    }
}

/// What names a message owed to a session in its `Delivered` record.
pub fn message_id(topic: &str, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(topic.as_bytes()), payload)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads what `put_str` wrote.
fn take_str<'a>(body: &mut &'a [u8]) -> Option<&'a str> {
    let len = u16::from_le_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(body.get(2..2 + len)?).ok()?;
    *body = &body[2 + len..];
    Some(s)
}

fn take_u16(body: &mut &[u8]) -> Option<u16> {
    let value = u16::from_le_bytes(body.get(..2)?.try_into().ok()?);
    *body = &body[2..];
    Some(value)
}

fn take_u32(body: &mut &[u8]) -> Option<u32> {
    let value = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    *body = &body[4..];
    Some(value)
}

/// A message as retained and queued records keep it: wall-clock ns, Message Expiry as unix
/// seconds (0: none), an MQTT 5 PUBLISH.
fn put_message(
    out: &mut Vec<u8>,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    properties: Option<&Properties>,
) {
    let now_ns = unix_ns();
    let expiry_unix_secs = properties
        .and_then(|p| p.message_expiry_interval)
        .map_or(0, |interval| {
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
        put_str(body, client_id);
        body.push(version);
        body.extend_from_slice(&expiry_secs.to_le_bytes());
        body.extend_from_slice(&left_unix_ms.to_le_bytes());
    });
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
        put_message(body, topic, payload, qos, retain, properties);
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
fn decode_will(mut body: &[u8]) -> Option<(u32, RetainedMessage)> {
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
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&out[start..start + 5]),
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
    let now_ns = unix_ns();
    let expiry_unix_secs = properties
        .and_then(|p| p.message_expiry_interval)
        .map_or(0, |interval| {
            now_ns / 1_000_000_000 + u64::from(interval) + 1
        });
    append_record(out, Kind::Retained, |body| {
        body.extend_from_slice(&now_ns.to_le_bytes());
        body.extend_from_slice(&expiry_unix_secs.to_le_bytes());
        let packet_id = if qos == QoS::AtMostOnce { 0 } else { 1 };
        // Nothing the broker accepted fails to encode; a record that did would be refused by
        // the replay (a bad PUBLISH), so the body is kept whole either way.
        let _ = protocol::encode_publish(
            body,
            ProtocolVersion::V5,
            topic,
            payload,
            qos,
            true,
            false,
            packet_id,
            properties,
        );
    });
}

/// A message restored at start: retained (handed to every shard) or owed to a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedMessage {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// With the Message Expiry Interval left, when it has one.
    pub properties: Option<Arc<Properties>>,
}

/// A persistent session restored at start; every shard gets them all and keeps its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredSession {
    pub client_id: Box<str>,
    /// The protocol level it last connected with.
    pub version: u8,
    pub expiry_secs: u32,
    /// How long its client had been away at the start (wall clock, ms): its expiry runs on
    /// from there. 0 for one whose client was connected when the broker stopped.
    pub away_ms: u64,
    /// (filter, MQTT 5 options byte, Subscription Identifier or 0), by filter.
    pub subscriptions: Vec<(ByteString, u8, u32)>,
    /// Owed QoS 1/2 messages not yet sent under a recorded packet id, oldest first.
    pub messages: Vec<RetainedMessage>,
    /// Outbound QoS 2 messages sent under a packet id and not yet PUBRECed: sent again
    /// under it, with DUP=1, when the client resumes.
    pub inflight: Vec<(u16, RetainedMessage)>,
    /// Outbound QoS 2 packet ids the client sent PUBREC for: PUBREL owed, PUBCOMP awaited.
    pub released: Vec<u16>,
    /// Inbound QoS 2 packet ids taken and not yet released by the client's PUBREL.
    pub incoming_qos2: Vec<u16>,
    /// The will of its last connection, not yet published or discarded, with its Will Delay
    /// Interval: the restart ended that connection, so it is due that long after the start.
    pub will: Option<(u32, RetainedMessage)>,
}

/// What the logs held, for the shards.
#[derive(Default)]
pub struct Restored {
    pub retained: Vec<RetainedMessage>,
    pub sessions: Vec<RestoredSession>,
    /// (client id, will) of sessions that ended while the broker was down (their expiry ran
    /// out) with a will not yet published: the session's end makes it due, whatever its Will
    /// Delay Interval, so it is published at the start by the client id's home shard.
    pub wills_due: Vec<(Box<str>, RetainedMessage)>,
}

/// What `open` hands the broker: shard K's log, and the restored state.
pub struct Opened {
    /// Shard K's log, opened for writing at its end (`Log::offset`).
    pub logs: Vec<Log>,
    pub restored: Arc<Restored>,
    /// Held for the broker's life: a second broker on the same dir is refused.
    pub lock: File,
}

/// One shard's log file and where its next record goes.
pub struct Log {
    pub file: File,
    pub path: PathBuf,
    pub offset: u64,
}

/// A record read back: its kind, body, and where it starts in its file.
struct Record<'a> {
    kind: Kind,
    body: &'a [u8],
    offset: usize,
}

/// The records of one log up to its end or its torn tail; an error for corruption.
fn records<'a>(bytes: &'a [u8], path: &Path) -> Result<Vec<Record<'a>>, String> {
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
        let actual = crc32c::crc32c_append(crc32c::crc32c(&record[..5]), &record[RECORD_HEADER..]);
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

/// A retained record's topic's latest state while the logs are replayed.
struct RetainedEntry {
    time_ns: u64,
    /// The record's body, written again as is into a snapshot.
    body: Vec<u8>,
    /// `None`: deleted or expired (a start's snapshot drops it; a running shard's compaction
    /// keeps it, as it must still win over older records of the topic in other logs).
    message: Option<RetainedMessage>,
}

/// Decodes a retained record's body: (time, expiry, message).
fn decode_retained(body: &[u8]) -> Option<(u64, u64, RetainedMessage)> {
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
fn publish_id(publish: &[u8]) -> Option<u32> {
    let qos = (*publish.first()? >> 1) & 3;
    let (remaining, mut at) = varint(publish, 1)?;
    let packet = publish.get(..at.checked_add(remaining)?)?;
    let topic_len = u16::from_be_bytes(packet.get(at..at + 2)?.try_into().ok()?) as usize;
    at += 2;
    let topic = packet.get(at..at + topic_len)?;
    at += topic_len + if qos > 0 { 2 } else { 0 };
    let (properties_len, after) = varint(packet, at)?;
    let payload = packet.get(after.checked_add(properties_len)?..)?;
    Some(crc32c::crc32c_append(crc32c::crc32c(topic), payload))
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

/// A session while the logs are replayed.
#[derive(Default)]
struct SessionEntry {
    version: u8,
    expiry_secs: u32,
    /// When its client left, unix ms; 0 while connected.
    left_unix_ms: u64,
    subscriptions: std::collections::BTreeMap<String, (u8, u32)>,
    /// (message id, the packet id it went out under when one was recorded (`Sent`), record
    /// body after the client id), decoded only for a start's sessions: a running shard's
    /// compaction never needs the message itself.
    messages: std::collections::VecDeque<(u32, Option<u16>, Vec<u8>)>,
    /// Outbound QoS 2 ids awaiting PUBCOMP.
    released: std::collections::BTreeSet<u16>,
    /// Inbound QoS 2 ids awaiting PUBREL.
    incoming_qos2: std::collections::BTreeSet<u16>,
    /// The will record's body after the client id, and the will.
    will: Option<(Vec<u8>, (u32, RetainedMessage))>,
}

impl SessionEntry {
    /// The records that make this session again, into a snapshot.
    fn write(&self, out: &mut Vec<u8>, client_id: &str) {
        append_session(
            out,
            client_id,
            self.version,
            self.expiry_secs,
            self.left_unix_ms,
        );
        for (filter, &(options, subscription_id)) in &self.subscriptions {
            append_subscribe(out, client_id, filter, options, subscription_id);
        }
        for (message_id, packet_id, body) in &self.messages {
            append_record(out, Kind::Message, |out| {
                put_str(out, client_id);
                out.extend_from_slice(body);
            });
            if let Some(packet_id) = *packet_id {
                append_sent(out, client_id, packet_id, *message_id);
            }
        }
        for &packet_id in &self.released {
            append_released(out, client_id, packet_id, None);
        }
        for &packet_id in &self.incoming_qos2 {
            append_packet_id(out, Kind::IncomingQos2, client_id, packet_id);
        }
        if let Some((body, _)) = &self.will {
            append_record(out, Kind::Will, |out| {
                put_str(out, client_id);
                out.extend_from_slice(body);
            });
        }
    }
}

/// Compaction of a running shard's log (`shard/durable.rs`): `bytes`, the log's records up
/// to some point, written again as the fewest records that say the same. Sessions are the
/// shard's own (it writes only those); retained records are those this shard wrote, the
/// latest per topic, deleted and expired ones kept (they must still win over older records of
/// the topic in other shards' logs at the next start).
pub fn compact(bytes: &[u8], path: &Path) -> Result<Vec<u8>, String> {
    let mut state = State::default();
    for record in records(bytes, path)? {
        state.apply(&record, path)?;
    }
    Ok(state.compacted())
}

/// [`compact`] fed a slice at a time, as a running shard reads its log back
/// (`shard/durable.rs`): no copy of the whole log in memory, no list of all its records.
/// Only whole batches are applied (each ends with its `Commit`); a log that is still being
/// appended to ends at a batch's end, so anything else (a bad CRC, a record cut short at the
/// end) is an error, and the compaction is abandoned, never a silent loss.
pub struct Compactor {
    state: State,
    path: PathBuf,
    /// Offset in the log of the next byte `feed` is given.
    offset: usize,
}

impl Compactor {
    pub fn new(path: &Path) -> Compactor {
        Compactor {
            state: State::default(),
            path: path.to_path_buf(),
            offset: 0,
        }
    }

    /// Applies the whole batches at the start of `bytes` (the log from where the last call's
    /// batches ended); returns how many bytes they took. The rest, a batch the slice cuts, is
    /// given again with what follows it.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, String> {
        let mut at = 0;
        let mut batch_start = 0;
        let mut batch = Vec::new();
        while let Some(rest) = bytes.get(at..).filter(|rest| rest.len() >= RECORD_HEADER) {
            let offset = self.offset + at;
            let corrupt = |what: &str| {
                format!(
                    "persistence log {} is corrupt at offset {offset}: {what}",
                    self.path.display()
                )
            };
            let len = u32::from_le_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
            if len > RECORD_BODY_MAX {
                return Err(corrupt("record length out of range"));
            }
            let Some(record) = rest.get(..RECORD_HEADER + len) else {
                break; // the slice ends inside it
            };
            let crc = u32::from_le_bytes(record[5..9].try_into().expect("4 bytes"));
            let actual =
                crc32c::crc32c_append(crc32c::crc32c(&record[..5]), &record[RECORD_HEADER..]);
            if crc != actual {
                return Err(corrupt("bad CRC32C"));
            }
            let kind = Kind::from_u8(record[0]).ok_or_else(|| corrupt("unknown record kind"))?;
            at += record.len();
            if kind == Kind::Commit {
                for record in batch.drain(..) {
                    self.state.apply(&record, &self.path)?;
                }
                batch_start = at;
            } else {
                batch.push(Record {
                    kind,
                    body: &record[RECORD_HEADER..],
                    offset,
                });
            }
        }
        self.offset += batch_start;
        Ok(batch_start)
    }

    /// The snapshot of what the batches fed said, as [`compact`] writes it.
    pub fn finish(self) -> Vec<u8> {
        self.state.compacted()
    }
}

/// Everything the live generation's logs describe (hashed with foldhash: a compaction looks a
/// session up for every record of a running shard's log).
#[derive(Default)]
struct State {
    retained: HashMap<ByteString, RetainedEntry, foldhash::fast::RandomState>,
    sessions: HashMap<String, SessionEntry, foldhash::fast::RandomState>,
}

impl State {
    /// The fewest records that say what this state holds (see [`compact`]).
    fn compacted(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut topics: Vec<&ByteString> = self.retained.keys().collect();
        topics.sort();
        for topic in topics {
            let body = &self.retained[topic].body;
            append_record(&mut out, Kind::Retained, |out| out.extend_from_slice(body));
        }
        let mut client_ids: Vec<&String> = self.sessions.keys().collect();
        client_ids.sort();
        for client_id in client_ids {
            self.sessions[client_id].write(&mut out, client_id);
        }
        append_commit(&mut out);
        out
    }

    fn apply(&mut self, record: &Record<'_>, path: &Path) -> Result<(), String> {
        let bad = || {
            format!(
                "persistence log {} is corrupt at offset {}: a {:?} record that does not \
                 decode",
                path.display(),
                record.offset,
                record.kind
            )
        };
        let mut body = record.body;
        match record.kind {
            Kind::Commit => {}
            Kind::Session => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                let version = *body.first().ok_or_else(bad)?;
                body = &body[1..];
                let expiry_secs = take_u32(&mut body).ok_or_else(bad)?;
                // Absent in logs written before it was recorded.
                let left_unix_ms = match body.get(..8) {
                    Some(bytes) => u64::from_le_bytes(bytes.try_into().expect("8")),
                    None => 0,
                };
                let entry = self.sessions.entry(client_id.to_string()).or_default();
                entry.version = version;
                entry.expiry_secs = expiry_secs;
                entry.left_unix_ms = left_unix_ms;
            }
            Kind::SessionEnd => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                self.sessions.remove(client_id);
            }
            Kind::Subscribe => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                let filter = take_str(&mut body).ok_or_else(bad)?;
                let options = *body.first().ok_or_else(bad)?;
                body = &body[1..];
                let subscription_id = take_u32(&mut body).ok_or_else(bad)?;
                if let Some(entry) = self.sessions.get_mut(client_id) {
                    entry
                        .subscriptions
                        .insert(filter.to_string(), (options, subscription_id));
                }
            }
            Kind::Unsubscribe => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                let filter = take_str(&mut body).ok_or_else(bad)?;
                if let Some(entry) = self.sessions.get_mut(client_id) {
                    entry.subscriptions.remove(filter);
                }
            }
            Kind::Message => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                let expiry_unix_secs =
                    u64::from_le_bytes(body.get(8..16).ok_or_else(bad)?.try_into().expect("8"));
                let id = body.get(16..).and_then(publish_id).ok_or_else(bad)?;
                let expired =
                    expiry_unix_secs != 0 && expiry_unix_secs <= unix_ns() / 1_000_000_000;
                if let Some(entry) = self.sessions.get_mut(client_id) {
                    if !expired {
                        entry.messages.push_back((id, None, body.to_vec()));
                    }
                }
            }
            Kind::Delivered => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                let id = take_u32(&mut body).ok_or_else(bad)?;
                if let Some(entry) = self.sessions.get_mut(client_id) {
                    if let Some(index) = entry.messages.iter().position(|m| m.0 == id) {
                        entry.messages.remove(index);
                    }
                }
            }
            Kind::Released => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                let packet_id = take_u16(&mut body).ok_or_else(bad)?;
                let message = (!body.is_empty())
                    .then(|| take_u32(&mut body).ok_or_else(bad))
                    .transpose()?;
                if let Some(entry) = self.sessions.get_mut(client_id) {
                    if let Some(id) = message {
                        // The copy sent under this id, or (a log without `Sent` records) one
                        // never recorded as sent.
                        let index = entry
                            .messages
                            .iter()
                            .position(|m| m.0 == id && m.1 == Some(packet_id))
                            .or_else(|| {
                                entry
                                    .messages
                                    .iter()
                                    .position(|m| m.0 == id && m.1.is_none())
                            });
                        if let Some(index) = index {
                            entry.messages.remove(index);
                        }
                    }
                    entry.released.insert(packet_id);
                }
            }
            Kind::Sent => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                let packet_id = take_u16(&mut body).ok_or_else(bad)?;
                let id = take_u32(&mut body).ok_or_else(bad)?;
                if let Some(entry) = self.sessions.get_mut(client_id) {
                    // Equal messages are interchangeable: the oldest not yet sent.
                    if let Some(m) = entry
                        .messages
                        .iter_mut()
                        .find(|m| m.0 == id && m.1.is_none())
                    {
                        m.1 = Some(packet_id);
                    }
                }
            }
            Kind::Will => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                let will = decode_will(body).ok_or_else(bad)?;
                if let Some(entry) = self.sessions.get_mut(client_id) {
                    entry.will = Some((body.to_vec(), will));
                }
            }
            Kind::WillEnd => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                if let Some(entry) = self.sessions.get_mut(client_id) {
                    entry.will = None;
                }
            }
            Kind::Completed | Kind::IncomingQos2 | Kind::IncomingReleased => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                let packet_id = take_u16(&mut body).ok_or_else(bad)?;
                if let Some(entry) = self.sessions.get_mut(client_id) {
                    match record.kind {
                        Kind::Completed => entry.released.remove(&packet_id),
                        Kind::IncomingQos2 => entry.incoming_qos2.insert(packet_id),
                        _ => entry.incoming_qos2.remove(&packet_id),
                    };
                }
            }
            Kind::Retained => {
                let Some((time_ns, expiry_unix_secs, message)) = decode_retained(record.body)
                else {
                    return Err(format!(
                        "persistence log {} is corrupt at offset {}: a retained record whose \
                         message does not decode",
                        path.display(),
                        record.offset
                    ));
                };
                let newer = self
                    .retained
                    .get(&message.topic)
                    .is_none_or(|old| old.time_ns <= time_ns);
                if !newer {
                    return Ok(());
                }
                let expired =
                    expiry_unix_secs != 0 && expiry_unix_secs <= unix_ns() / 1_000_000_000;
                let live = !message.payload.is_empty() && !expired;
                let entry = RetainedEntry {
                    time_ns,
                    body: record.body.to_vec(),
                    message: live.then(|| message.clone()),
                };
                self.retained.insert(message.topic, entry);
            }
        }
        Ok(())
    }
}

fn io_error(what: &str, path: &Path, e: io::Error) -> String {
    format!("persistence: cannot {what} {}: {e}", path.display())
}

fn sync_dir(path: &Path) -> Result<(), String> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io_error("sync directory", path, e))
}

/// The live generation `CURRENT` names, if any.
fn current_generation(dir: &Path) -> Result<Option<u64>, String> {
    let path = dir.join("CURRENT");
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            format!(
                "persistence: {} should hold a generation number, holds {:?}",
                path.display(),
                text.trim()
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", &path, e)),
    }
}

fn generation_dir(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("gen-{generation}"))
}

/// Takes an exclusive lock on `dir/LOCK`: two brokers appending to one log would corrupt it.
fn lock(dir: &Path) -> Result<File, String> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("open", &path, e))?;
    // SAFETY: flock on a descriptor we own.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        return Err(format!(
            "persistence: {} is in use by another ringmq (it holds {})",
            dir.display(),
            path.display()
        ));
    }
    Ok(file)
}

/// Replays the live generation of `dir`, writes its state as the next generation with one log
/// per shard (`shard_count` of them), switches `CURRENT` to it and removes the old one.
pub fn open(dir: &Path, shard_count: usize) -> Result<Opened, String> {
    fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
    let lock = lock(dir)?;
    let current = current_generation(dir)?;
    let mut state = State::default();
    if let Some(generation) = current {
        let gen_dir = generation_dir(dir, generation);
        let mut paths: Vec<PathBuf> = fs::read_dir(&gen_dir)
            .map_err(|e| io_error("read directory", &gen_dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        paths.sort();
        for path in &paths {
            let bytes = fs::read(path).map_err(|e| io_error("read", path, e))?;
            for record in records(&bytes, path)? {
                state.apply(&record, path)?;
            }
        }
    }

    let next = current.map_or(1, |g| g + 1);
    let next_dir = generation_dir(dir, next);
    if next_dir.exists() {
        // Left by a start that crashed before switching `CURRENT`: never live.
        fs::remove_dir_all(&next_dir).map_err(|e| io_error("remove", &next_dir, e))?;
    }
    fs::create_dir(&next_dir).map_err(|e| io_error("create", &next_dir, e))?;
    let mut snapshots: Vec<Vec<u8>> = vec![Vec::new(); shard_count.max(1)];
    let mut retained = Vec::new();
    let mut topics: Vec<&ByteString> = state.retained.keys().collect();
    topics.sort();
    for topic in topics {
        let entry = &state.retained[topic];
        if let Some(message) = &entry.message {
            append_record(&mut snapshots[0], Kind::Retained, |out| {
                out.extend_from_slice(&entry.body)
            });
            retained.push(message.clone());
        }
    }
    // A session whose expiry ran out while the broker was down ends here; the others were
    // left (at the latest) now.
    let now_ms = unix_ns() / 1_000_000;
    let mut wills_due = Vec::new();
    state.sessions.retain(|client_id, entry| {
        if entry.left_unix_ms == 0 {
            entry.left_unix_ms = now_ms;
        }
        let away_ms = now_ms.saturating_sub(entry.left_unix_ms);
        let live = entry.expiry_secs == u32::MAX || away_ms < u64::from(entry.expiry_secs) * 1000;
        if !live {
            // [MQTT-3.1.3-9] The session ended: its will is due (at most once: the snapshot
            // no longer holds it, so a crash before it is delivered loses it).
            if let Some((_, (_, will))) = entry.will.take() {
                wills_due.push((client_id.as_str().into(), will));
            }
        }
        live
    });
    // Each session into the log of the shard its client id now homes on.
    let mut sessions = Vec::with_capacity(state.sessions.len());
    let mut client_ids: Vec<&String> = state.sessions.keys().collect();
    client_ids.sort();
    for client_id in client_ids {
        let entry = &state.sessions[client_id];
        let home = crate::mesh::home_shard(client_id.as_bytes(), snapshots.len());
        entry.write(&mut snapshots[home], client_id);
        sessions.push(RestoredSession {
            client_id: client_id.as_str().into(),
            version: entry.version,
            expiry_secs: entry.expiry_secs,
            away_ms: now_ms.saturating_sub(entry.left_unix_ms),
            subscriptions: entry
                .subscriptions
                .iter()
                .map(|(filter, &(options, id))| (ByteString::from(filter.as_str()), options, id))
                .collect(),
            messages: entry
                .messages
                .iter()
                .filter(|m| m.1.is_none())
                .map(|(_, _, body)| decode_retained(body).map(|(_, _, message)| message))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    format!("persistence: a message queued for {client_id:?} does not decode")
                })?,
            inflight: entry
                .messages
                .iter()
                .filter_map(|(_, packet_id, body)| Some((packet_id.as_ref()?, body)))
                .map(|(&packet_id, body)| {
                    decode_retained(body).map(|(_, _, message)| (packet_id, message))
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    format!("persistence: a message in flight to {client_id:?} does not decode")
                })?,
            released: entry.released.iter().copied().collect(),
            incoming_qos2: entry.incoming_qos2.iter().copied().collect(),
            will: entry.will.as_ref().map(|(_, will)| will.clone()),
        });
    }
    let mut logs = Vec::with_capacity(snapshots.len());
    for snapshot in &mut snapshots {
        append_commit(snapshot);
    }
    for (shard, snapshot) in snapshots.iter().enumerate() {
        let path = next_dir.join(format!("shard-{shard}.log"));
        // Read too: compaction reads the log back while running.
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("create", &path, e))?;
        file.write_all(snapshot)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("write", &path, e))?;
        if std::env::var_os("RINGMQ_TEST_LOG_WRITES_FAIL").is_some() {
            // Tests: the shard's writes fail (EBADF on a read-only descriptor), as on a dead
            // disk, so the refusal to acknowledge can be seen from outside.
            file = File::open(&path).map_err(|e| io_error("open", &path, e))?;
        }
        logs.push(Log {
            file,
            path,
            offset: snapshot.len() as u64,
        });
    }
    sync_dir(&next_dir)?;
    let current_tmp = dir.join("CURRENT.tmp");
    let current_path = dir.join("CURRENT");
    let mut tmp = File::create(&current_tmp).map_err(|e| io_error("create", &current_tmp, e))?;
    writeln!(tmp, "{next}")
        .and_then(|()| tmp.sync_all())
        .map_err(|e| io_error("write", &current_tmp, e))?;
    fs::rename(&current_tmp, &current_path).map_err(|e| io_error("rename", &current_tmp, e))?;
    sync_dir(dir)?;
    if let Some(generation) = current {
        let old = generation_dir(dir, generation);
        if let Err(e) = fs::remove_dir_all(&old) {
            log::warn!("persistence: cannot remove {}: {e}", old.display());
        }
    }
    Ok(Opened {
        logs,
        restored: Arc::new(Restored {
            retained,
            sessions,
            wills_due,
        }),
        lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retained_log(messages: &[(&str, &str)]) -> Vec<u8> {
        let mut log = Vec::new();
        for (topic, payload) in messages {
            append_retained(&mut log, topic, payload.as_bytes(), QoS::AtLeastOnce, None);
        }
        log
    }

    #[test]
    fn records_read_back_whole_and_a_torn_tail_ends_the_log() {
        let log = retained_log(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let path = Path::new("test.log");
        assert_eq!(records(&log, path).unwrap().len(), 3);
        // Cut anywhere inside the last record: the first two are all there is.
        let last = records(&log, path).unwrap()[2].offset;
        for cut in last..log.len() {
            assert_eq!(records(&log[..cut], path).unwrap().len(), 2, "cut at {cut}");
        }
        // The last record half overwritten (bad CRC), and zeros after a record: torn too.
        let mut bad_last = log.clone();
        *bad_last.last_mut().unwrap() ^= 0xFF;
        assert_eq!(records(&bad_last, path).unwrap().len(), 2);
        let mut zeros = log.clone();
        zeros.extend_from_slice(&[0; 4096]);
        assert_eq!(records(&zeros, path).unwrap().len(), 3);
    }

    #[test]
    fn a_batch_torn_before_its_commit_is_dropped_whole() {
        let mut log = Vec::new();
        append_retained(&mut log, "a", b"1", QoS::AtLeastOnce, None);
        append_commit(&mut log);
        let first_batch = log.len();
        // One batch of two records: a crash may tear it anywhere, even in its commit.
        append_retained(&mut log, "b", b"2", QoS::AtLeastOnce, None);
        append_retained(&mut log, "c", b"3", QoS::AtLeastOnce, None);
        append_commit(&mut log);
        let path = Path::new("test.log");
        let kept = |bytes: &[u8]| {
            records(bytes, path)
                .unwrap()
                .iter()
                .filter(|r| r.kind == Kind::Retained)
                .count()
        };
        assert_eq!(kept(&log), 3);
        for cut in first_batch..log.len() {
            assert_eq!(kept(&log[..cut]), 1, "cut at {cut}");
        }
    }

    #[test]
    fn a_bad_record_in_the_middle_names_the_file_and_offset() {
        let mut log = retained_log(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let path = Path::new("shard-0.log");
        let second = records(&log, path).unwrap()[1].offset;
        log[second + RECORD_HEADER + 3] ^= 0xFF;
        let error = records(&log, path).err().expect("corruption is refused");
        assert!(error.contains("shard-0.log"), "{error}");
        assert!(error.contains(&format!("offset {second}")), "{error}");
    }

    /// Appends a QoS 1 message without properties for `client_id`, not retained.
    fn append_qos1(log: &mut Vec<u8>, client_id: &str, topic: &str, payload: &[u8]) {
        append_message(
            log,
            client_id,
            topic,
            payload,
            QoS::AtLeastOnce,
            false,
            None,
        );
    }

    fn replay(log: &[u8]) -> State {
        let path = Path::new("test.log");
        let mut state = State::default();
        for record in records(log, path).unwrap() {
            state.apply(&record, path).unwrap();
        }
        state
    }

    #[test]
    fn a_session_keeps_its_subscriptions_and_the_messages_not_yet_delivered() {
        let mut log = Vec::new();
        append_session(&mut log, "c1", 4, 60, 0);
        append_subscribe(&mut log, "c1", "a/+", 1, 0);
        append_subscribe(&mut log, "c1", "b/#", 2 | 4, 7);
        append_unsubscribe(&mut log, "c1", "a/+");
        for payload in ["m1", "m2", "m1"] {
            append_qos1(&mut log, "c1", "b/x", payload.as_bytes());
        }
        // Either copy of two equal messages may be the one acknowledged.
        append_delivered(&mut log, "c1", message_id("b/x", b"m1"));
        // Records for a session the log never opened (or already ended) are ignored.
        append_subscribe(&mut log, "c2", "z", 0, 0);
        append_session(&mut log, "c3", 5, 10, 0);
        append_session_end(&mut log, "c3");
        let state = replay(&log);
        assert_eq!(state.sessions.len(), 1);
        let c1 = &state.sessions["c1"];
        assert_eq!((c1.version, c1.expiry_secs), (4, 60));
        let subscriptions: Vec<_> = c1.subscriptions.iter().collect();
        assert_eq!(subscriptions, [(&"b/#".to_string(), &(6, 7))]);
        let payloads: Vec<Vec<u8>> = c1
            .messages
            .iter()
            .map(|m| decode_retained(&m.2).unwrap().2.payload.to_vec())
            .collect();
        assert_eq!(payloads, [&b"m2"[..], &b"m1"[..]]);
    }

    #[test]
    fn qos2_state_is_kept_until_its_flow_completes() {
        let mut log = Vec::new();
        append_session(&mut log, "c1", 4, 60, 0);
        append_message(&mut log, "c1", "t", b"m", QoS::ExactlyOnce, false, None);
        append_message(&mut log, "c1", "t", b"n", QoS::ExactlyOnce, false, None);
        // PUBREC for "m" as id 3: no longer owed, its PUBREL is; PUBCOMP for id 4.
        append_released(&mut log, "c1", 3, Some(message_id("t", b"m")));
        append_released(&mut log, "c1", 4, None);
        append_packet_id(&mut log, Kind::Completed, "c1", 4);
        append_packet_id(&mut log, Kind::IncomingQos2, "c1", 7);
        append_packet_id(&mut log, Kind::IncomingQos2, "c1", 8);
        append_packet_id(&mut log, Kind::IncomingReleased, "c1", 8);
        let state = replay(&log);
        let c1 = &state.sessions["c1"];
        let payloads: Vec<Vec<u8>> = c1
            .messages
            .iter()
            .map(|m| decode_retained(&m.2).unwrap().2.payload.to_vec())
            .collect();
        assert_eq!(payloads, [&b"n"[..]]);
        assert_eq!(c1.released.iter().copied().collect::<Vec<_>>(), [3]);
        assert_eq!(c1.incoming_qos2.iter().copied().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn a_qos2_message_keeps_the_packet_id_it_went_out_under_until_its_pubrec() {
        let mut log = Vec::new();
        append_session(&mut log, "c1", 4, 60, 0);
        // Two equal messages and a third: the first two went out as ids 9 and 10.
        for payload in [&b"m"[..], b"m", b"n"] {
            append_message(&mut log, "c1", "t", payload, QoS::ExactlyOnce, false, None);
        }
        append_sent(&mut log, "c1", 9, message_id("t", b"m"));
        append_sent(&mut log, "c1", 10, message_id("t", b"m"));
        // PUBREC for id 10: the copy sent under 10 goes, the one under 9 stays in flight.
        append_released(&mut log, "c1", 10, Some(message_id("t", b"m")));
        let ids = |state: &State| -> Vec<(Option<u16>, Vec<u8>)> {
            state.sessions["c1"]
                .messages
                .iter()
                .map(|m| (m.1, decode_retained(&m.2).unwrap().2.payload.to_vec()))
                .collect()
        };
        let state = replay(&log);
        let expected = [(Some(9), b"m".to_vec()), (None, b"n".to_vec())];
        assert_eq!(ids(&state), expected);
        // A compaction and a start's snapshot keep the id with its message.
        let compacted = compact(&log, Path::new("test.log")).unwrap();
        assert_eq!(ids(&replay(&compacted)), expected);
        assert_eq!(
            state.sessions["c1"]
                .released
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            [10]
        );
    }

    #[test]
    fn a_session_record_carries_when_its_client_left_and_older_ones_read_as_connected() {
        let mut log = Vec::new();
        append_session(&mut log, "c1", 5, 60, 1_700_000_000_123);
        // As written before the leaving time was recorded: no field after the interval.
        append_record(&mut log, Kind::Session, |body| {
            put_str(body, "c2");
            body.push(4);
            body.extend_from_slice(&60u32.to_le_bytes());
        });
        let state = replay(&log);
        assert_eq!(state.sessions["c1"].left_unix_ms, 1_700_000_000_123);
        assert_eq!(
            (
                state.sessions["c2"].version,
                state.sessions["c2"].expiry_secs
            ),
            (4, 60)
        );
        assert_eq!(state.sessions["c2"].left_unix_ms, 0);
        // Compaction keeps it.
        let compacted = compact(&log, Path::new("test.log")).unwrap();
        assert_eq!(
            replay(&compacted).sessions["c1"].left_unix_ms,
            1_700_000_000_123
        );
    }

    #[test]
    fn a_start_drops_sessions_that_expired_while_down_and_tells_how_long_the_others_were_away() {
        let dir = std::env::temp_dir().join(format!("ringmq-persist-away-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("gen-1")).unwrap();
        fs::write(dir.join("CURRENT"), "1\n").unwrap();
        let now_ms = unix_ns() / 1_000_000;
        let mut log = Vec::new();
        append_session(&mut log, "expired", 5, 5, now_ms - 10_000);
        append_qos1(&mut log, "expired", "t", b"m");
        append_session(&mut log, "away", 5, 60, now_ms - 10_000);
        append_session(&mut log, "never", 5, u32::MAX, now_ms - 10_000_000);
        append_session(&mut log, "connected", 4, 5, 0);
        fs::write(dir.join("gen-1/shard-0.log"), &log).unwrap();
        let opened = open(&dir, 1).unwrap();
        let mut away: Vec<(&str, u64)> = opened
            .restored
            .sessions
            .iter()
            .map(|s| (&*s.client_id, s.away_ms))
            .collect();
        away.sort();
        assert_eq!(away.len(), 3, "{away:?}");
        assert_eq!(away[0], ("away", away[0].1));
        assert!((10_000..20_000).contains(&away[0].1), "{away:?}");
        // Connected when the broker stopped: left at this start.
        assert_eq!(away[1].0, "connected");
        assert!(away[1].1 < 5_000, "{away:?}");
        assert_eq!(away[2].0, "never");
        drop(opened);
        // The snapshot says the same: the start is the connected one's leaving time.
        let snapshot = fs::read(dir.join("gen-2/shard-0.log")).unwrap();
        let state = replay(&snapshot);
        assert!(!state.sessions.contains_key("expired"));
        assert!(state.sessions["connected"].left_unix_ms >= now_ms);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_will_is_kept_until_it_ends_and_keeps_its_delay_and_properties() {
        let properties = Properties {
            will_delay_interval: Some(30),
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        let will = protocol::LastWill {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: properties.into(),
        };
        let mut log = Vec::new();
        append_session(&mut log, "c1", 5, 60, 0);
        append_will(&mut log, "c1", &will);
        append_session(&mut log, "c2", 5, 60, 0);
        append_will(&mut log, "c2", &will);
        append_will_end(&mut log, "c2");
        let state = replay(&log);
        assert!(state.sessions["c2"].will.is_none());
        let (_, (delay, message)) = state.sessions["c1"].will.as_ref().unwrap();
        assert_eq!(*delay, 30);
        assert_eq!(
            (&message.topic[..], &message.payload[..]),
            ("w/t", &b"gone"[..])
        );
        assert_eq!((message.qos, message.retain), (QoS::AtLeastOnce, true));
        let p = message.properties.as_deref().unwrap();
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.will_delay_interval, None, "not a PUBLISH property");
    }

    #[test]
    fn compaction_keeps_what_the_log_says_and_drops_the_history() {
        let mut log = retained_log(&[("a", "1"), ("a", "2"), ("b", "x"), ("b", "")]);
        append_session(&mut log, "c1", 4, 60, 0);
        append_subscribe(&mut log, "c1", "t/#", 1, 0);
        for n in 0..100 {
            let payload = format!("m{n}");
            append_qos1(&mut log, "c1", "t/x", payload.as_bytes());
            if n != 42 {
                append_delivered(&mut log, "c1", message_id("t/x", payload.as_bytes()));
            }
        }
        append_packet_id(&mut log, Kind::IncomingQos2, "c1", 9);
        let compacted = compact(&log, Path::new("test.log")).unwrap();
        assert!(
            compacted.len() * 10 < log.len(),
            "{} of {}",
            compacted.len(),
            log.len()
        );
        let (before, after) = (replay(&log), replay(&compacted));
        let payloads: Vec<Vec<u8>> = after.sessions["c1"]
            .messages
            .iter()
            .map(|m| decode_retained(&m.2).unwrap().2.payload.to_vec())
            .collect();
        assert_eq!(payloads, [&b"m42"[..]]);
        assert_eq!(
            after.sessions["c1"].subscriptions,
            before.sessions["c1"].subscriptions
        );
        assert_eq!(
            after.sessions["c1"].incoming_qos2,
            before.sessions["c1"].incoming_qos2
        );
        let a = after.retained[&ByteString::from("a")]
            .message
            .as_ref()
            .unwrap();
        assert_eq!(&a.payload[..], b"2");
        // The delete is kept, with its time: it still wins over older records elsewhere.
        let b = &after.retained[&ByteString::from("b")];
        assert!(b.message.is_none());
        assert_eq!(b.time_ns, before.retained[&ByteString::from("b")].time_ns);
        // Compacting again changes nothing.
        assert_eq!(
            compact(&compacted, Path::new("test.log")).unwrap(),
            compacted
        );
    }

    #[test]
    fn a_compactor_fed_in_slices_writes_what_compact_writes() {
        let path = Path::new("test.log");
        let mut log = Vec::new();
        append_session(&mut log, "c1", 4, 60, 0);
        append_subscribe(&mut log, "c1", "t/#", 1, 7);
        append_commit(&mut log);
        for n in 0..50 {
            let payload = format!("message {n}");
            append_qos1(&mut log, "c1", "t/x", payload.as_bytes());
            if n % 3 != 0 {
                append_delivered(&mut log, "c1", message_id("t/x", payload.as_bytes()));
            }
            append_retained(
                &mut log,
                &format!("r/{}", n % 7),
                payload.as_bytes(),
                QoS::AtMostOnce,
                None,
            );
            append_commit(&mut log);
        }
        let expected = compact(&log, path).unwrap();
        // Slices of every size from one byte up: batches cut anywhere, records too.
        for slice in [1, 9, 10, 64, 100, 1000, log.len()] {
            let mut compactor = Compactor::new(path);
            let mut buf = Vec::new();
            for chunk in log.chunks(slice) {
                buf.extend_from_slice(chunk);
                let used = compactor.feed(&buf).unwrap();
                buf.drain(..used);
            }
            assert!(buf.is_empty(), "slice {slice}: {} bytes left", buf.len());
            assert_eq!(compactor.finish(), expected, "slice {slice}");
        }
        // A batch left without its commit is not applied; corruption is an error, with its offset.
        let mut compactor = Compactor::new(path);
        let cut = log.len() - RECORD_HEADER - 1;
        assert!(compactor.feed(&log[..cut]).unwrap() < cut);
        let mut bad = log.clone();
        let at = records(&log, path).unwrap()[20..]
            .iter()
            .find(|r| r.kind == Kind::Message)
            .unwrap()
            .offset;
        bad[at + RECORD_HEADER] ^= 0xFF;
        let error = Compactor::new(path)
            .feed(&bad)
            .expect_err("corruption is refused");
        assert!(
            error.contains(&format!("test.log is corrupt at offset {at}:")),
            "{error}"
        );
    }

    #[test]
    fn a_message_id_is_read_in_place_as_decoding_would_give_it() {
        let properties = Properties {
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        for (qos, properties) in [
            (QoS::AtMostOnce, None),
            (QoS::AtLeastOnce, Some(&properties)),
            (QoS::ExactlyOnce, None),
        ] {
            let payload = vec![7u8; 300]; // a two-byte remaining length
            let mut log = Vec::new();
            append_message(&mut log, "c", "a/b", &payload, qos, false, properties);
            let body = &log[RECORD_HEADER + 2 + 1..];
            assert_eq!(publish_id(&body[16..]), Some(message_id("a/b", &payload)));
        }
    }

    #[test]
    fn the_latest_retained_record_of_a_topic_wins_and_a_delete_leaves_none() {
        let log = retained_log(&[("a", "1"), ("b", "2"), ("a", "3"), ("b", "")]);
        let path = Path::new("test.log");
        let mut state = State::default();
        for record in records(&log, path).unwrap() {
            state.apply(&record, path).unwrap();
        }
        let a = state.retained[&ByteString::from("a")]
            .message
            .as_ref()
            .unwrap();
        assert_eq!(&a.payload[..], b"3");
        assert!(state.retained[&ByteString::from("b")].message.is_none());
    }
}
