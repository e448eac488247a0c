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
//! A torn tail (a crash in the middle of a write: a short record, or a bad CRC in the last
//! record, or zeros to the end of the file) is where the log ends; nothing after it was ever
//! acknowledged, because an ack that depends on a record waits for its write and fdatasync. A
//! bad record with valid-looking data after it is corruption, not a crash: the start fails,
//! naming the file and the offset, rather than silently dropping what follows.
//!
//! Recorded in this slice: retained messages (set and delete, with their MQTT 5 properties and
//! Message Expiry). Sessions, their subscriptions and queues are the next slice.
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
}

impl Kind {
    fn from_u8(value: u8) -> Option<Kind> {
        match value {
            1 => Some(Kind::Retained),
            _ => None,
        }
    }
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

/// A retained message restored at start, handed to every shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedMessage {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    /// With the Message Expiry Interval left, when it has one.
    pub properties: Option<Arc<Properties>>,
}

/// What `open` hands the broker: shard K's log, and the restored state.
pub struct Opened {
    /// Shard K's log, opened for writing at its end (`Log::offset`).
    pub logs: Vec<Log>,
    pub retained: Arc<Vec<RetainedMessage>>,
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
    Ok(records)
}

/// A retained record's topic's latest state while the logs are replayed.
struct RetainedEntry {
    time_ns: u64,
    /// The record's body, written again as is into the snapshot; `None`: deleted.
    body: Option<Vec<u8>>,
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
        properties: properties.map(Arc::new),
    };
    Some((time_ns, expiry_unix_secs, message))
}

/// Everything the live generation's logs describe.
#[derive(Default)]
struct State {
    retained: HashMap<ByteString, RetainedEntry>,
}

impl State {
    fn apply(&mut self, record: &Record<'_>, path: &Path) -> Result<(), String> {
        match record.kind {
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
                    body: live.then(|| record.body.to_vec()),
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
        if let (Some(body), Some(message)) = (&entry.body, &entry.message) {
            append_record(&mut snapshots[0], Kind::Retained, |out| {
                out.extend_from_slice(body)
            });
            retained.push(message.clone());
        }
    }
    let mut logs = Vec::with_capacity(snapshots.len());
    for (shard, snapshot) in snapshots.iter().enumerate() {
        let path = next_dir.join(format!("shard-{shard}.log"));
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("create", &path, e))?;
        file.write_all(snapshot)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("write", &path, e))?;
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
            eprintln!("ringmq: persistence: cannot remove {}: {e}", old.display());
        }
    }
    Ok(Opened {
        logs,
        retained: Arc::new(retained),
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
    fn a_bad_record_in_the_middle_names_the_file_and_offset() {
        let mut log = retained_log(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let path = Path::new("shard-0.log");
        let second = records(&log, path).unwrap()[1].offset;
        log[second + RECORD_HEADER + 3] ^= 0xFF;
        let error = records(&log, path).err().expect("corruption is refused");
        assert!(error.contains("shard-0.log"), "{error}");
        assert!(error.contains(&format!("offset {second}")), "{error}");
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
