//! Issue 7, fuzzing: turns arbitrary bytes into a session of several MQTT clients on 2 shards
//! (`ringmq::shard::sim::SimBroker`: real shards, real mesh, a simulated kernel) and plays it.
//!
//! The input chooses the configuration (small limits, so they are hit), then actions: a client
//! connects to a shard (a new connection; its old one stays open, so client ids collide and
//! take-overs and hand-offs happen), writes packets built from structured choices (CONNECT with
//! colliding ids, wills and versions, SUBSCRIBE with `#`, `+`, `$share/g/..` filters, PUBLISH at
//! QoS 0/1/2 retained or not, the acks with random packet ids, UNSUBSCRIBE, PINGREQ,
//! DISCONNECT), sometimes corrupted, or raw bytes, cut into chunks at arbitrary points; closes
//! or resets; stops or resumes reading (sends stay in flight), or reads in small cuts; time
//! advances. After each settled step the shards must be within their limits; at the end every
//! client closes and every connection must be released, and what the broker sent each client
//! must decode as MQTT, starting with a CONNACK.
//!
//! Shared by `tests/fuzz_shards.rs` (seeded, bounded, in CI), `examples/fuzz_shards.rs` (a
//! timed run) and `fuzz/fuzz_targets/shards.rs` (cargo-fuzz, nightly).

use arbitrary::{Result, Unstructured};
use bytes::{Bytes, BytesMut};
use ringmq::config::Config;
use ringmq::protocol::{
    decode, encode, Connect, Disconnect, LastWill, Packet, Props, ProtocolVersion, PubAck, Publish,
    QoS, Subscribe, SubscriptionOptions, Unsubscribe,
};
use ringmq::shard::sim::{SimBroker, SocketId};

/// Clients in one session; each may hold several connections over time.
const CLIENTS: usize = 5;
/// Actions per session at most: the input's length bounds it too.
const ACTIONS_MAX: usize = 256;

/// Few ids, so connections collide (take-over) and land away from home (hand-off). The empty
/// id gets one assigned (or is refused without clean session).
const CLIENT_IDS: &[&str] = &["a", "b", "c", "d", "e", ""];
const TOPICS: &[&str] = &[
    "a",
    "a/b",
    "a/b/c",
    "b",
    "a//b",
    "/",
    "$SYS/x",
    "$share/g/a",
];
const FILTERS: &[&str] = &[
    "#",
    "+",
    "+/#",
    "a/#",
    "a/+",
    "a/b",
    "a//b",
    "+/+/+",
    "/",
    "$SYS/#",
    "$share/g/#",
    "$share/g/a/+",
    "$share/h/a/b",
    "$share/g/+",
    "a/#/b",
    "",
];

/// What one played input did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub actions: usize,
    pub connections: usize,
    pub turns: u64,
    /// Both shards' counters, summed: what the inputs reached.
    pub messages_in: u64,
    pub messages_out: u64,
    pub refused: u64,
    pub protocol_errors: u64,
    pub handoffs: u64,
    pub mesh_overflowed: u64,
    pub dropped: u64,
}

impl Outcome {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Outcome) {
        self.actions += other.actions;
        self.connections += other.connections;
        self.turns += other.turns;
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
        self.refused += other.refused;
        self.protocol_errors += other.protocol_errors;
        self.handoffs += other.handoffs;
        self.mesh_overflowed += other.mesh_overflowed;
        self.dropped += other.dropped;
    }
}

struct Client {
    /// Its connections, newest last.
    sockets: Vec<SocketId>,
    /// Its connections that were sent a CONNECT.
    greeted: Vec<SocketId>,
    version: ProtocolVersion,
}

/// Plays `data`; panics on a broken invariant (the broker's or the simulated kernel's).
pub fn play(data: &[u8]) -> Outcome {
    play_with_signature(data).0
}

/// `play`, and which of the shards' counters the input moved (bucketed: 0, 1, a few, many),
/// as a cheap stand-in for coverage: a timed run keeps inputs that show a new signature.
pub fn play_with_signature(data: &[u8]) -> (Outcome, u128) {
    let mut u = Unstructured::new(data);
    let Ok(config) = config(&mut u) else {
        return (Outcome::default(), 0);
    };
    let mut sim = SimBroker::new(config).expect("a simulated broker");
    sim.set_trace(std::env::var_os("RINGMQ_SIM_TRACE").is_some());
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|_| Client {
            sockets: Vec::new(),
            greeted: Vec::new(),
            version: ProtocolVersion::V3_1_1,
        })
        .collect();
    let mut outcome = Outcome::default();
    while outcome.actions < ACTIONS_MAX && !u.is_empty() {
        if step(&mut u, &mut sim, &mut clients).is_err() {
            break;
        }
        outcome.actions += 1;
        if u.ratio(1, 3).unwrap_or(true) {
            sim.run();
            sim.check_bounds();
        }
    }
    sim.run();
    sim.check_bounds();
    outcome.turns = sim.turns();
    sim.finish();
    for client in &clients {
        for &socket in &client.sockets {
            check_output(sim.received(socket), socket);
        }
        outcome.connections += client.sockets.len();
    }
    for stats in sim.stats() {
        outcome.messages_in += stats.messages_in;
        outcome.messages_out += stats.messages_out;
        outcome.refused += stats.connections_refused;
        outcome.protocol_errors += stats.protocol_errors;
        outcome.handoffs += stats.handoffs_in;
        outcome.mesh_overflowed += stats.mesh_overflowed;
        outcome.dropped += stats.dropped_outbox_full
            + stats.dropped_queue_full
            + stats.dropped_offline_qos0
            + stats.mesh_dropped_qos0;
    }
    (outcome, signature(&sim))
}

/// Which counters of which shard moved: one bit each.
fn signature(sim: &SimBroker) -> u128 {
    let mut signature = 0u128;
    for (shard, stats) in sim.stats().iter().enumerate() {
        let counters = [
            stats.connections_accepted,
            stats.connections_refused,
            stats.connections_closed,
            stats.messages_in,
            stats.messages_out,
            stats.dropped_outbox_full,
            stats.dropped_queue_full,
            stats.dropped_offline_qos0,
            stats.table_full_count,
            stats.recv_nobufs_count,
            stats.protocol_errors,
            stats.mesh_pushes,
            stats.mesh_overflowed,
            stats.mesh_dropped_qos0,
            stats.mesh_received,
            stats.mesh_wakes,
            stats.handoffs_out,
            stats.handoffs_in,
            stats.handoffs_failed,
            stats.dropped_no_group_member,
        ];
        for (n, value) in counters.into_iter().enumerate() {
            if value > 0 {
                signature |= 1 << (shard * counters.len() + n);
            }
        }
    }
    signature
}

fn config(u: &mut Unstructured) -> Result<Config> {
    let mut config = Config {
        shards: 2,
        rings_per_shard: u.int_in_range(1..=2)?,
        ring_files_max: u.int_in_range(2..=6)?,
        ring_entries: 64,
        recv_buffer_count: 1 << u.int_in_range(1..=3)?,
        recv_buffer_size: *u.choose(&[64, 100, 256])?,
        ..Config::default()
    };
    let limits = &mut config.limits;
    limits.packet_size_max = u.int_in_range(64..=512)?;
    limits.connections_max = u.int_in_range(2..=8)?;
    limits.inflight_max = u.int_in_range(1..=3)?;
    limits.offline_queue_max = u.int_in_range(0..=6)?;
    limits.outbox_bytes_max = u.int_in_range(1024..=2048)?;
    limits.keepalive_max_secs = u.int_in_range(0..=4)?;
    limits.qos_max = u.int_in_range(0..=2)?;
    limits.mesh_batch_max = u.int_in_range(1..=4)?;
    limits.mesh_ring_capacity = u.int_in_range(1..=4)?;
    limits.mesh_overflow_max = u.int_in_range(0..=8)?;
    limits.connect_timeout_secs = u.int_in_range(1..=4)?;
    // A client that stops reading is dropped within the session's few simulated seconds.
    limits.outbox_stall_secs = limits.connect_timeout_secs;
    Ok(config)
}

fn step(u: &mut Unstructured, sim: &mut SimBroker, clients: &mut [Client]) -> Result<()> {
    let client = u.choose_index(clients.len())?;
    match u.int_in_range(0..=15)? {
        0..=1 => {
            let shard = u.choose_index(sim.shard_count())?;
            let socket = sim.connect(shard);
            clients[client].sockets.push(socket);
        }
        2..=9 => {
            let socket = socket_of(u, sim, &mut clients[client])?;
            let mut stream = Vec::new();
            for _ in 0..u.int_in_range(1..=3)? {
                // Mostly a CONNECT first, or the broker closes the connection at once.
                let client = &mut clients[client];
                let packet = if !client.greeted.contains(&socket) && u.ratio(7, 8)? {
                    connect(u, client)?
                } else {
                    packet(u, client)?
                };
                if let Packet::Connect(_) = packet {
                    client.greeted.push(socket);
                }
                let mut out = BytesMut::new();
                if encode(&packet, client.version, &mut out).is_err() {
                    continue;
                }
                if u.ratio(1, 16)? {
                    // A corrupted byte: whatever it turns into must be handled.
                    let at = u.choose_index(out.len())?;
                    out[at] ^= u.int_in_range(1..=255)?;
                }
                stream.extend_from_slice(&out);
            }
            write_in_chunks(u, sim, socket, &stream)?;
        }
        10 => {
            let socket = socket_of(u, sim, &mut clients[client])?;
            let len = u.int_in_range(0..=64)?;
            let bytes = u.bytes(len)?.to_vec();
            write_in_chunks(u, sim, socket, &bytes)?;
        }
        11 => {
            let socket = socket_of(u, sim, &mut clients[client])?;
            if u.ratio(1, 2)? {
                sim.close(socket);
            } else {
                sim.reset(socket);
            }
        }
        12 => {
            let socket = socket_of(u, sim, &mut clients[client])?;
            let reading = u.ratio(1, 2)?;
            sim.set_reading(socket, reading);
            sim.set_send_cut(socket, *u.choose(&[0, 0, 1, 3, 7])?);
        }
        13 => {
            let ms = *u.choose(&[0, 100, 999, 1_000, 1_500, 3_000, 7_000])?;
            sim.advance(ms);
        }
        14 => sim.set_recv_burst_max(u.int_in_range(1..=8)?),
        _ => sim.run(),
    }
    Ok(())
}

/// One of the client's connections (mostly the newest), opening one if it has none.
fn socket_of(u: &mut Unstructured, sim: &mut SimBroker, client: &mut Client) -> Result<SocketId> {
    if client.sockets.is_empty() {
        let shard = u.choose_index(sim.shard_count())?;
        client.sockets.push(sim.connect(shard));
    }
    if u.ratio(1, 8)? {
        return Ok(*u.choose(&client.sockets)?);
    }
    Ok(*client.sockets.last().expect("one at least"))
}

/// Writes `bytes` cut at up to three arbitrary points.
fn write_in_chunks(
    u: &mut Unstructured,
    sim: &mut SimBroker,
    socket: SocketId,
    bytes: &[u8],
) -> Result<()> {
    let mut rest = bytes;
    for _ in 0..u.int_in_range(0..=3)? {
        if rest.len() < 2 {
            break;
        }
        let cut = u.int_in_range(1..=rest.len() - 1)?;
        sim.write(socket, &rest[..cut]);
        rest = &rest[cut..];
    }
    sim.write(socket, rest);
    Ok(())
}

fn packet_id(u: &mut Unstructured) -> Result<u16> {
    Ok(match u.int_in_range(0..=9)? {
        0 => 0,
        1 => u.arbitrary()?,
        n => n as u16 / 3 + 1,
    })
}

fn qos(u: &mut Unstructured) -> Result<QoS> {
    Ok(*u.choose(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])?)
}

fn topic(u: &mut Unstructured) -> Result<&'static str> {
    u.choose(TOPICS).copied()
}

fn payload(u: &mut Unstructured) -> Result<Bytes> {
    let len = *u.choose(&[0, 1, 5, 20, 60, 200])?;
    Ok(Bytes::copy_from_slice(u.bytes(len.min(u.len()))?))
}

fn connect(u: &mut Unstructured, client: &mut Client) -> Result<Packet> {
    let protocol = *u.choose(&[
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V3_1,
        ProtocolVersion::V5,
    ])?;
    client.version = protocol;
    let will = match u.ratio(1, 3)? {
        true => Some(LastWill {
            topic: topic(u)?.into(),
            payload: payload(u)?,
            qos: qos(u)?,
            retain: u.arbitrary()?,
            properties: Props::NONE,
        }),
        false => None,
    };
    Ok(Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: u.ratio(2, 3)?,
        keepalive_secs: *u.choose(&[0, 1, 2, 60])?,
        client_id: u.choose(CLIENT_IDS)?.to_string().into(),
        will,
        username: u.ratio(1, 8)?.then(|| "user".into()),
        password: None,
        properties: Props::NONE,
    })))
}

fn packet(u: &mut Unstructured, client: &mut Client) -> Result<Packet> {
    let ack = |u: &mut Unstructured| -> Result<PubAck> { Ok(PubAck::new(packet_id(u)?)) };
    Ok(match u.int_in_range(0..=12)? {
        0..=1 => connect(u, client)?,
        2..=3 => {
            let mut filters = Vec::new();
            for _ in 0..u.int_in_range(1..=3)? {
                let options = SubscriptionOptions {
                    qos: qos(u)?,
                    ..SubscriptionOptions::default()
                };
                filters.push((u.choose(FILTERS)?.to_string().into(), options));
            }
            Packet::Subscribe(Subscribe {
                packet_id: packet_id(u)?,
                filters,
                properties: Props::NONE,
            })
        }
        4 => {
            let mut filters = Vec::new();
            for _ in 0..u.int_in_range(1..=2)? {
                filters.push(u.choose(FILTERS)?.to_string().into());
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id: packet_id(u)?,
                filters,
                properties: Props::NONE,
            })
        }
        5..=7 => {
            let qos = qos(u)?;
            Packet::Publish(Publish {
                dup: u.ratio(1, 8)?,
                qos,
                retain: u.ratio(1, 3)?,
                topic: topic(u)?.into(),
                packet_id: if qos == QoS::AtMostOnce {
                    0
                } else {
                    packet_id(u)?
                },
                payload: payload(u)?,
                properties: Props::NONE,
            })
        }
        8 => Packet::PubAck(ack(u)?),
        9 => Packet::PubRec(ack(u)?),
        10 => Packet::PubRel(ack(u)?),
        11 => match u.int_in_range(0..=2)? {
            0 => Packet::PubComp(ack(u)?),
            1 => Packet::Disconnect(Disconnect::default()),
            _ => Packet::PingReq,
        },
        _ => Packet::PingReq,
    })
}

/// What the broker sent must be MQTT (in the client's version, 3.1.1 or 5.0), starting with a
/// CONNACK; a send cut short by a close may leave a partial packet at the end.
fn check_output(received: &[u8], socket: SocketId) {
    if received.is_empty() {
        return;
    }
    let parses = |version| -> Option<Vec<Packet>> {
        let mut buf = BytesMut::from(received);
        let mut packets = Vec::new();
        while let Some(packet) = decode(&mut buf, version, u32::MAX).ok()? {
            packets.push(packet);
        }
        Some(packets)
    };
    let packets = parses(ProtocolVersion::V3_1_1)
        .or_else(|| parses(ProtocolVersion::V5))
        .unwrap_or_else(|| {
            panic!("socket {socket}: the broker sent malformed bytes {received:02x?}")
        });
    assert!(
        matches!(packets.first(), None | Some(Packet::ConnAck(_))),
        "socket {socket}: the first packet sent is {:?}, not a CONNACK",
        packets.first()
    );
}

/// xorshift64*: random inputs reproducible from the seed alone, for the seeded test and the
/// timed run alike.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn input(&mut self) -> Vec<u8> {
        let len = 16 + self.below(2048);
        (0..len).map(|_| self.next() as u8).collect()
    }
}
