//! Durability on disk (issue 10): one append-only log per shard, replayed at start.
//!
//! Layout of `[persistence] dir`: `CURRENT` names the live generation `N` (one line), and
//! `gen-N/shard-K.log` is shard K's log. Shared-nothing on disk as in memory: a shard appends
//! only to its own log, through its own io_uring (`shard/durable/`), one write (and, with
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
//! ([`Compactor`], `shard/durable/compaction.rs`: the log read back a slice at a time, each replayed as
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
//! `IncomingReleased`), and with several shards the keys of the QoS 2 flows whose messages a
//! persistent session was given, until their publishers' PUBREL (`Seen`, `Unseen`:
//! `shard/exactly_once.rs`). The will of a persistent session's connection is kept until it is
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

mod crc;
mod record;
mod replay;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::protocol::{Properties, QoS};

pub use record::{
    append_commit, append_delivered, append_flow_key, append_message, append_packet_id,
    append_record, append_released, append_retained, append_sent, append_session,
    append_session_as, append_session_end, append_subscribe, append_unsubscribe, append_will,
    append_will_end, message_id, unix_ns, Kind, RECORD_HEADER,
};
use record::{decode_retained, records};
use replay::State;
pub use replay::{compact, Compactor};

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
    /// The username it last connected with (the ACL's rules are resolved with it).
    pub username: Option<Box<str>>,
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
    /// Keys (publisher's client id, packet id) of the QoS 2 flows whose message the session
    /// was given and whose publisher has not released them yet (`Kind::Seen`).
    pub flow_keys: Vec<(Box<str>, u16)>,
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
            username: entry.username.as_deref().map(Into::into),
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
            flow_keys: entry
                .flow_keys
                .iter()
                .map(|(publisher, packet_id)| (publisher.as_str().into(), *packet_id))
                .collect(),
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
