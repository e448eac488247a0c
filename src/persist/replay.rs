//! The state the records describe, replayed from them: at start (`open`) and in a running
//! shard's compaction (`compact`, `Compactor`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytestring::ByteString;

use super::record::{
    append_commit, append_flow_key, append_packet_id, append_record, append_released, append_sent,
    append_session_as, append_subscribe, decode_retained, decode_will, publish_id, put_str,
    records, take_str, take_u16, take_u32, unix_ns, Kind, Record, RECORD_BODY_MAX, RECORD_HEADER,
};
use super::RetainedMessage;

/// A retained record's topic's latest state while the logs are replayed.
pub(super) struct RetainedEntry {
    pub(super) time_ns: u64,
    /// The record's body, written again as is into a snapshot.
    pub(super) body: Vec<u8>,
    /// `None`: deleted or expired (a start's snapshot drops it; a running shard's compaction
    /// keeps it, as it must still win over older records of the topic in other logs).
    pub(super) message: Option<RetainedMessage>,
}

/// A session while the logs are replayed.
#[derive(Default)]
pub(super) struct SessionEntry {
    pub(super) version: u8,
    pub(super) expiry_secs: u32,
    /// When its client left, unix ms; 0 while connected.
    pub(super) left_unix_ms: u64,
    /// The username its client last connected with.
    pub(super) username: Option<String>,
    pub(super) subscriptions: std::collections::BTreeMap<String, (u8, u32)>,
    /// (message id, the packet id it went out under when one was recorded (`Sent`), record
    /// body after the client id), decoded only for a start's sessions: a running shard's
    /// compaction never needs the message itself.
    pub(super) messages: std::collections::VecDeque<(u32, Option<u16>, Vec<u8>)>,
    /// Outbound QoS 2 ids awaiting PUBCOMP.
    pub(super) released: std::collections::BTreeSet<u16>,
    /// Inbound QoS 2 ids awaiting PUBREL.
    pub(super) incoming_qos2: std::collections::BTreeSet<u16>,
    /// (publisher's client id, packet id) of QoS 2 flows the session was given a message of
    /// and that were not released yet (`Kind::Seen`).
    pub(super) flow_keys: std::collections::BTreeSet<(String, u16)>,
    /// The will record's body after the client id, and the will.
    pub(super) will: Option<(Vec<u8>, (u32, RetainedMessage))>,
}

impl SessionEntry {
    /// The records that make this session again, into a snapshot.
    pub(super) fn write(&self, out: &mut Vec<u8>, client_id: &str) {
        append_session_as(
            out,
            client_id,
            self.version,
            self.expiry_secs,
            self.left_unix_ms,
            self.username.as_deref(),
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
        for (publisher, packet_id) in &self.flow_keys {
            append_flow_key(out, Kind::Seen, client_id, publisher, *packet_id);
        }
        if let Some((body, _)) = &self.will {
            append_record(out, Kind::Will, |out| {
                put_str(out, client_id);
                out.extend_from_slice(body);
            });
        }
    }
}

/// Compaction of a running shard's log (`shard/durable/compaction.rs`): `bytes`, the log's records up
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
/// (`shard/durable/compaction.rs`): no copy of the whole log in memory, no list of all its records.
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
            let actual = super::crc::crc32c_append(
                super::crc::crc32c(&record[..5]),
                &record[RECORD_HEADER..],
            );
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
pub(super) struct State {
    pub(super) retained: HashMap<ByteString, RetainedEntry, foldhash::fast::RandomState>,
    pub(super) sessions: HashMap<String, SessionEntry, foldhash::fast::RandomState>,
}

impl State {
    /// The fewest records that say what this state holds (see [`compact`]).
    pub(super) fn compacted(&self) -> Vec<u8> {
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

    pub(super) fn apply(&mut self, record: &Record<'_>, path: &Path) -> Result<(), String> {
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
                let mut username = None;
                if let Some(rest) = body.get(8..).filter(|rest| !rest.is_empty()) {
                    let mut rest = &rest[1..];
                    username = Some(match body[8] {
                        0 => None,
                        1 => Some(take_str(&mut rest).ok_or_else(bad)?.to_string()),
                        _ => return Err(bad()),
                    });
                }
                let entry = self.sessions.entry(client_id.to_string()).or_default();
                entry.version = version;
                entry.expiry_secs = expiry_secs;
                entry.left_unix_ms = left_unix_ms;
                if let Some(username) = username {
                    entry.username = username;
                }
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
            Kind::Seen | Kind::Unseen => {
                let client_id = take_str(&mut body).ok_or_else(bad)?;
                let publisher = take_str(&mut body).ok_or_else(bad)?;
                let packet_id = take_u16(&mut body).ok_or_else(bad)?;
                if let Some(entry) = self.sessions.get_mut(client_id) {
                    let key = (publisher.to_string(), packet_id);
                    if record.kind == Kind::Seen {
                        entry.flow_keys.insert(key);
                    } else {
                        entry.flow_keys.remove(&key);
                    }
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
