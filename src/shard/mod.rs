//! One shard: a pinned thread that owns an io_uring, the connections accepted on its listener,
//! the sessions of their clients, a subscription trie and the retained messages, and shares
//! none of it. The loop turn, top to bottom: reap completions and handle them (accept, recv →
//! decode → handle → route → encode into outboxes, send), drain the mesh (before every batch
//! of completions, so an interest change pushed before a SUBACK is seen before any publish
//! that SUBACK could have caused), run the coarse timer, push on the mesh overflow and wake the
//! shards that got messages and may be asleep, then flush every outbox that filled during the
//! turn with one send per connection.
//!
//! A client lives on its home shard (`mesh::home_shard`): a connection accepted elsewhere is
//! handed over after its CONNECT, descriptor by MSG_RING and bytes by the mesh (`handoff.rs`).
//!
//! This file is the loop: the shard's state, its turn and the completions' dispatch, the
//! wake-ups and the timer's sweep, the stop. Reading is in `recv.rs`, writing in `send.rs`,
//! closing in `close.rs`, accepting in `accept.rs` (one accept per listener), TLS records in
//! and out in `transport.rs`; MQTT handling in `handle.rs` (CONNECT and DISCONNECT in
//! `connect.rs`, SUBSCRIBE in `subscribe.rs`), routing and delivery of a message in
//! `deliver.rs`, every PUBLISH encoded for a connection in `outgoing.rs` (with its MQTT 5
//! aliases and size limit, `conn_v5.rs`), mesh routing in `meshing.rs`, the session table in
//! `sessions.rs`, session expiry and delayed wills in `limits.rs`, the connect/disconnect and
//! limit lines in `log_lines.rs`.

mod accept;
mod access;
mod backpressure;
mod body;
mod close;
pub mod conn;
mod conn_v5;
mod connect;
mod deliver;
mod durable;
mod exactly_once;
mod handle;
mod handoff;
mod held;
mod limits;
mod log_lines;
mod meshing;
mod outgoing;
pub mod peers;
mod problem;
mod recv;
pub mod route;
mod send;
mod sessions;
#[doc(hidden)]
pub mod sim;
pub mod stats;
mod subscribe;
mod subscription_ids;
pub mod sys;
pub mod timer;
mod transport;

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use bytestring::ByteString;
use io_uring::types::Timespec;

use crate::auth::{EnhancedAuthMethods, PasswordFile};
use crate::config::Config;
use crate::listener::Listener;
use crate::mesh::exact::FilterHasher;
use crate::mesh::{InterestIndex, LocalInterest, ShardMesh};
use crate::protocol::QoS;
use crate::ring::{Completion, Op, Ring, RingSizes, Token};
use crate::session::Message;
use crate::tls::TlsConn;
use crate::topic::retained::RetainedStore;
use crate::topic::Subscriptions;
use crate::websocket::WsConn;

use close::CloseReason;
use conn::{conn_id, ConnState, Conns, Pools};
use route::{SharedInterest, SharedSubscriptions};
use sessions::Sessions;
pub use stats::{ShardStats, StatsBoard};

/// A new outbox buffer's capacity (when the pool has none to reuse).
const OUTBOX_INITIAL: usize = 512;

/// What a retained message weighs against `retained_bytes_max` beside its topic: its payload
/// and its MQTT 5 properties as they go on the wire.
fn retained_weight(message: &Message) -> usize {
    message.payload.len()
        + message
            .properties
            .as_deref()
            .map_or(0, crate::protocol::properties_len)
}

// A retained message without an expiry never comes up in the store's expiry heap.
const _: () = assert!(crate::session::NEVER == crate::topic::retained::NO_DEADLINE);
/// The receive arena grows in blocks of this size: one allocation holds many payloads.
const ARENA_BLOCK: usize = 64 << 10;
/// Completions taken from the ring per batch.
const REAP_BATCH: usize = 4096;

/// Wakes a shard from another thread: `Broker::stop`, and the mesh when a shard's ring is not
/// known (the mesh otherwise wakes with a MSG_RING, no syscall of its own). An eventfd the
/// shard keeps a read armed on.
pub struct Waker {
    fd: OwnedFd,
    stop: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Arc<Waker>> {
        // SAFETY: eventfd returns a new descriptor or -1. Blocking on purpose: io_uring polls
        // it, and a non-blocking one could complete the read with EAGAIN.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Arc::new(Waker {
            fd,
            stop: AtomicBool::new(false),
        }))
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. It can only fail when the
        // counter would overflow, and then the shard is awake anyway.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Asks the shard to close its connections and return from `run`.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// What a shard needs to start; built by `Broker::start`.
pub struct ShardParams {
    pub index: usize,
    pub config: Config,
    /// This shard's socket of each listener, in `listeners` order.
    pub sockets: Vec<TcpListener>,
    pub listeners: Arc<Vec<Listener>>,
    pub waker: Arc<Waker>,
    /// The password and ACL files, and the generation a reload bumps (`access.rs`).
    pub security: Arc<crate::security::Security>,
    /// Fixed-file slots for the ring.
    pub files: u32,
    /// Where the shard publishes a copy of its counters once a second (and when it stops),
    /// into its own slot, for `Broker::stats`, `$SYS` and the metrics endpoint: the hot path
    /// keeps plain integers.
    pub board: Arc<StatsBoard>,
    /// This shard's ends of the mesh (`Mesh::new(1, ..)` for a single shard: no rings).
    pub mesh: ShardMesh,
    pub peers: Arc<peers::Peers>,
    /// With persistence on: this shard's log, and the state restored at start (every shard
    /// gets all of it: each keeps the retained messages and its own sessions).
    pub persistence: Option<(crate::persist::Log, Arc<crate::persist::Restored>)>,
}

pub struct Shard {
    index: usize,
    config: Config,
    /// The shard's rings: `rings[0]` waits, the others are polled each turn and wake it
    /// through `ring_wake`. Each has its own fixed-file table and buffer ring.
    rings: Vec<Ring>,
    /// Fixed-file slots per ring.
    files: u32,
    /// The multishot accept and each ring's free slots (`accept.rs`).
    accept: accept::Accept,
    /// Registered on every secondary ring; the primary keeps a read armed on it.
    ring_wake: Option<OwnedFd>,
    ring_wake_buf: Box<u64>,
    /// This shard's socket of each listener (`listeners[k]` is what socket k speaks).
    sockets: Vec<TcpListener>,
    listeners: Arc<Vec<Listener>>,
    /// TLS state of the connections that have some (`transport.rs`), by (slot, generation).
    tls: hashbrown::HashMap<(u32, u32), Box<TlsConn>, foldhash::fast::RandomState>,
    /// Scratch: plaintext a TLS connection's records held, on its way to the inbox path.
    tls_plaintext: Vec<u8>,
    /// Some listener speaks TLS: only then does a connection's listener get looked at.
    tls_listeners: bool,
    /// WebSocket state of the connections that have some (`transport.rs`), likewise.
    ws: hashbrown::HashMap<(u32, u32), Box<WsConn>, foldhash::fast::RandomState>,
    /// Scratch: the MQTT bytes a WebSocket connection's frames held.
    ws_payload: Vec<u8>,
    /// Some listener speaks WebSocket (`ws`, `wss`).
    ws_listeners: bool,
    waker: Arc<Waker>,
    /// The eventfd read's 8-byte buffer; boxed so it stays put while the read is in flight.
    wake_buf: Box<u64>,
    /// The timer's timespec; boxed for the same reason.
    tick: Box<Timespec>,
    auth: Option<Arc<PasswordFile>>,
    /// The ACL, when there is one; with it, each session's rules (`access.rs`).
    acl: Option<Arc<crate::acl::AclFile>>,
    acl_clients: access::AclClients,
    security: Arc<crate::security::Security>,
    /// The `security` generation `auth` and `acl` come from.
    security_generation: u64,
    /// MQTT 5 enhanced authentication methods (none registered yet: 0x8C for every method).
    enhanced_auth: EnhancedAuthMethods,
    conns: Conns,
    sessions: Sessions,
    subscriptions: Subscriptions<route::Grant>,
    /// Hashes a topic once per publish for `subscriptions` and `interest` (`topic_hash`).
    topic_hasher: FilterHasher,
    shared: SharedSubscriptions,
    /// MQTT 5 Subscription Identifiers of the plain subscriptions that have one.
    subscription_ids: subscription_ids::SubscriptionIds,
    retained: RetainedStore<deliver::Retained>,
    /// Receive arena: bytes are copied here from the provided buffer, then split off and
    /// frozen, so decoded payloads share it instead of being copied again.
    arena: BytesMut,
    /// Where the arena's current block starts: a reserve that lands elsewhere allocated.
    arena_block: usize,
    /// Per target shard, the block small forwarded messages are copied into (`meshing.rs`,
    /// `mesh_copy`); this shard's own stays empty.
    mesh_out: Vec<BytesMut>,
    pools: Pools,
    /// Connections whose outbox filled this turn.
    dirty: Vec<(u32, u32)>,
    /// Connections whose multishot recv ended for lack of buffers; re-armed at turn end.
    recv_rearm: Vec<(u32, u32)>,
    completions: Vec<Completion>,
    /// Scratch for routing: (session, granted QoS) pairs, and shared group ids.
    matches: Vec<(u32, route::Grant)>,
    /// The session whose PUBLISH is being routed (`conn::NO_SESSION` otherwise), for No Local.
    publisher: u32,
    /// The QoS 2 flow of the message being routed, when its deliveries are keyed
    /// (`exactly_once.rs`); `None` otherwise.
    flow_key: Option<crate::mesh::FlowKey>,
    group_ids: Vec<u32>,
    /// Scratch: the members `$share` groups picked for one route.
    shared_picks: Vec<route::Member>,
    /// Scratch for the timer sweep.
    expired: Vec<(u32, u32, CloseReason)>,
    /// MQTT 5 wills waiting out their Will Delay Interval: (due shard ms, session, will). Few
    /// and short-lived, so a list scanned per tick (`limits.rs`).
    delayed_wills: Vec<(u64, u32, Box<crate::protocol::LastWill>)>,
    /// Encode once: a message's bytes per layout (version, RETAIN, QoS), valid for one route.
    encoding: outgoing::SharedEncoding,
    /// A copy of the routed message's topic and payload outside the receive arena, made once
    /// per route when a subscriber queues the message.
    unpinned: Option<(ByteString, bytes::Bytes)>,
    recv_paused_logged: bool,
    /// Connections whose reads wait for the mesh's overflow to drain (`backpressure.rs`).
    mesh_paused: Vec<(u32, u32)>,
    mesh_paused_logged: bool,
    outbox_stall_logged: bool,
    timer_due: bool,
    stopping: bool,
    clock: Instant,
    now_ms: u64,
    next_client_number: u64,
    stats: ShardStats,
    /// Receive-to-send and mesh transit waits (`stats.rs`), kept only with the metrics
    /// endpoint on: the clock reads they cost (one per turn that wrote messages, one per mesh
    /// drain that took some) are then the endpoint's price, not every broker's.
    latency: Option<Box<stats::ShardLatency>>,
    /// The turn's start on the shard clock (ns) and `stats.messages_out` then.
    turn_started_ns: u64,
    turn_messages_out: u64,
    /// The turn's start in µs since `stats::epoch()` (wrapping), stamped on forwards; 0 with
    /// the histograms off. `clock` is this much after the epoch.
    turn_us: u32,
    clock_offset_ns: u64,
    /// When the mesh messages being handled were taken, in µs since the epoch.
    mesh_taken_us: u32,
    board: Arc<StatsBoard>,
    /// The `$SYS` publisher's state: shard 0 only, when `sys_interval_secs` is not 0.
    sys: Option<Box<sys::SysTree>>,
    shard_count: usize,
    mesh: ShardMesh,
    peers: Arc<peers::Peers>,
    /// Filter -> shards with subscribers (replicated), and this shard's counts that feed it.
    interest: InterestIndex,
    local_interest: LocalInterest,
    /// `$share` group -> shards with members (replicated).
    shared_interest: SharedInterest,
    /// Scratch: (group, shard) picks of one route.
    shared_assigned: Vec<(ByteString, usize)>,
    handoffs_out: handoff::HandOffsOut,
    handoffs_in: peers::HandOffsIn,
    handoff_sequence: u32,
    handoff_error_logged: bool,
    connect_too_large_logged: bool,
    /// Bit per `limits::LimitHit` already logged.
    limits_logged: u32,
    /// Connect and disconnect lines, rate-limited; the limits' counters, told when they grow;
    /// the client id a refusal names; why a protocol error closes (`log_lines.rs`).
    conn_lines: log_lines::ConnLines,
    limit_watch: log_lines::LimitWatch,
    connecting: log_lines::Connecting,
    close_detail: Option<crate::protocol::DecodeError>,
    /// Acks waiting for other shards to take what their packets caused (`held.rs`).
    held: held::HeldAcks,
    /// SUBSCRIBEs handled a slice per turn (`subscribe.rs`), and scratch for their retained
    /// messages.
    subscribe_jobs: subscribe::SubscribeJobs,
    retained_scratch: Vec<Message>,
    /// The persistence log, when persistence is on (`durable/`).
    durable: Option<Box<durable::Durable>>,
    /// Persistence on with `sync = "ack"`: acks wait for what their packets caused to be
    /// durable, here and on the shards it was forwarded to.
    durable_acks: bool,
}

impl Shard {
    /// Builds the shard and its ring on the calling thread, which must be the thread that then
    /// calls `run` (the ring is single-issuer).
    pub fn new(params: ShardParams) -> io::Result<Shard> {
        let sizes = RingSizes {
            entries: params.config.ring_entries,
            files: params.files,
            recv_buffer_count: params.config.recv_buffers_per_ring(),
            recv_buffer_size: params.config.recv_buffer_size,
        };
        let rings = (0..params.config.rings_per_shard.max(1))
            .map(|ring| match ring {
                0 => Ring::new(sizes),
                _ => Ring::secondary(sizes),
            })
            .collect::<io::Result<Vec<Ring>>>()?;
        Shard::with_rings(params, rings)
    }

    /// The shard on rings built by the caller: `new`'s, or simulated ones (`sim`).
    fn with_rings(params: ShardParams, rings: Vec<Ring>) -> io::Result<Shard> {
        let config = params.config;
        let security_generation = params.security.generation();
        let files = params.security.files();
        let latency = config
            .metrics_listen
            .is_some()
            .then(|| Box::new(stats::ShardLatency::default()));
        let epoch = stats::epoch();
        let clock = Instant::now();
        let sys = (params.index == 0 && config.sys_interval_secs > 0)
            .then(|| Box::new(sys::SysTree::new(config.sys_interval_secs)));
        let ring_count = rings.len();
        let tls_listeners = params.listeners.iter().any(|l| l.tls.is_some());
        let ws_listeners = params.listeners.iter().any(|l| l.websocket);
        let ring_wake = if rings.len() > 1 {
            let waker = Waker::new()?;
            let waker = Arc::try_unwrap(waker).map_err(|_| io::Error::other("eventfd shared"))?;
            for ring in &rings[1..] {
                ring.register_eventfd(waker.fd.as_raw_fd())?;
            }
            Some(waker.fd)
        } else {
            None
        };
        let conn_lines = log_lines::ConnLines::new(&params.sockets, &params.listeners);
        let mut restored = None;
        let durable = params.persistence.map(|(log, retained)| {
            restored = Some(retained);
            Box::new(durable::Durable::new(log, &config.persistence))
        });
        let mut shard = Shard {
            index: params.index,
            config,
            rings,
            files: params.files,
            accept: accept::Accept::new(ring_count, params.files, params.sockets.len()),
            ring_wake,
            ring_wake_buf: Box::new(0),
            sockets: params.sockets,
            listeners: params.listeners,
            tls: Default::default(),
            tls_plaintext: Vec::new(),
            tls_listeners,
            ws: Default::default(),
            ws_payload: Vec::new(),
            ws_listeners,
            waker: params.waker,
            wake_buf: Box::new(0),
            tick: Box::new(Timespec::from(std::time::Duration::from_millis(
                timer::TICK_MS,
            ))),
            auth: files.auth,
            acl: files.acl,
            acl_clients: Default::default(),
            security_generation,
            security: params.security,
            enhanced_auth: EnhancedAuthMethods::default(),
            conns: Conns::default(),
            sessions: Sessions::default(),
            subscriptions: Subscriptions::new(),
            topic_hasher: FilterHasher::process(),
            subscription_ids: Default::default(),
            shared: SharedSubscriptions::default(),
            retained: RetainedStore::with_weigh_and_deadline(
                |replica| retained_weight(replica.message()),
                deliver::Retained::expires_secs,
            ),
            arena: BytesMut::new(),
            arena_block: 0,
            mesh_out: (0..params.mesh.shard_count())
                .map(|_| BytesMut::new())
                .collect(),
            pools: Pools::default(),
            dirty: Vec::new(),
            recv_rearm: Vec::new(),
            completions: Vec::with_capacity(REAP_BATCH),
            matches: Vec::new(),
            publisher: conn::NO_SESSION,
            flow_key: None,
            group_ids: Vec::new(),
            shared_picks: Vec::new(),
            expired: Vec::new(),
            delayed_wills: Vec::new(),
            encoding: Default::default(),
            unpinned: None,
            recv_paused_logged: false,
            mesh_paused: Vec::new(),
            mesh_paused_logged: false,
            outbox_stall_logged: false,
            timer_due: false,
            stopping: false,
            clock,
            now_ms: 0,
            next_client_number: 0,
            stats: ShardStats::default(),
            latency,
            turn_started_ns: 0,
            turn_messages_out: 0,
            turn_us: 0,
            clock_offset_ns: clock.duration_since(epoch).as_nanos() as u64,
            mesh_taken_us: 0,
            sys,
            board: params.board,
            shard_count: params.mesh.shard_count(),
            interest: InterestIndex::sharing(params.mesh.shard_count(), params.mesh.exact_masks()),
            mesh: params.mesh,
            peers: params.peers,
            local_interest: LocalInterest::new(),
            shared_interest: SharedInterest::default(),
            shared_assigned: Vec::new(),
            handoffs_out: handoff::HandOffsOut::default(),
            handoffs_in: peers::HandOffsIn::default(),
            handoff_sequence: 0,
            handoff_error_logged: false,
            connect_too_large_logged: false,
            limits_logged: 0,
            conn_lines,
            limit_watch: Default::default(),
            connecting: Default::default(),
            close_detail: None,
            held: held::HeldAcks::default(),
            subscribe_jobs: subscribe::SubscribeJobs::default(),
            retained_scratch: Vec::new(),
            durable_acks: durable.as_deref().is_some_and(durable::Durable::acks_wait),
            durable,
        };
        // From here the shard may read the shared interest table (restored wills are routed).
        shard.interest.quiescent(shard.index);
        if let Some(restored) = restored {
            shard.restore_retained(&restored.retained);
            shard.restore_sessions(&restored.sessions);
            shard.restore_wills_due(&restored.wills_due);
        }
        Ok(shard)
    }

    /// Retained messages read back from the logs at start, each with its expiry counted from
    /// now (what is left of it was worked out at the replay).
    fn restore_retained(&mut self, retained: &[crate::persist::RetainedMessage]) {
        let now_secs = self.now_secs();
        for restored in retained {
            let message = Arc::new(Message {
                topic: restored.topic.clone(),
                payload: restored.payload.clone(),
                qos: restored.qos,
                retain: true,
                properties: restored.properties.clone(),
                expires_secs: crate::session::NEVER,
            });
            let replica = deliver::Retained::new(message, now_secs);
            self.retained.set(&restored.topic, replica);
        }
    }

    pub fn stats(&self) -> &ShardStats {
        &self.stats
    }

    /// The rings' descriptors, where other shards send hand-offs.
    pub fn ring_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.rings.iter().map(Ring::raw_fd).collect()
    }

    /// One turn after another until `Waker::request_stop`: reap completions, handle them,
    /// drain the mesh, run due timers, flush the outboxes.
    pub fn run(&mut self) -> io::Result<()> {
        self.arm();
        while !self.stopping {
            if let Err(e) = self.turn() {
                self.interest.offline(self.index);
                return Err(e);
            }
        }
        self.stop_all();
        if let Some(durable) = self.durable.as_deref_mut() {
            durable.stop();
        }
        self.publish_stats();
        // Reads no shared interest table again (`shared_masks.rs`).
        self.interest.offline(self.index);
        Ok(())
    }

    /// Arms what the shard keeps in flight for its whole life: accept, wake-ups, timer.
    fn arm(&mut self) {
        self.arm_accept();
        self.arm_wake();
        self.arm_ring_wake();
        self.arm_timer();
    }

    /// One turn (`run` loops on it; `sim` drives it step by step).
    fn turn(&mut self) -> io::Result<()> {
        // Secondary rings first: submit their sends, run their deferred work. The primary
        // then waits, unless one of them already has completions; work arriving later
        // signals `ring_wake`, which the primary has a read armed on.
        let mut ready = false;
        for ring in self.rings.iter_mut().skip(1) {
            ring.poll()?;
            ready |= ring.has_completions();
        }
        self.wait(ready)?;
        for ring in self.rings.iter_mut().skip(1) {
            ring.poll()?;
        }
        self.see_mesh();
        let elapsed = self.clock.elapsed();
        self.now_ms = elapsed.as_millis() as u64;
        self.turn_started_ns = elapsed.as_nanos() as u64;
        self.turn_messages_out = self.stats.messages_out;
        if self.latency.is_some() {
            self.turn_us = self.epoch_us(self.turn_started_ns);
        }
        if self.security.generation() != self.security_generation {
            self.take_reloaded_security();
        }
        // What the connections sent before the mesh: a forward may have been caused by a
        // packet already here (a subscriber's DISCONNECT, then another client's PUBLISH:
        // delivered first, the message went to a closing connection and came back with DUP
        // on the next; mosquitto's 05-clean-session-qos1 on 2 shards, 4 runs in 30). And
        // only the forwards seen at the start (`see_mesh`): one pushed during the turn may
        // follow a packet whose completion the next wait posts. The other way round needs no
        // such order: an ack that tells a client the other shards have applied something (a
        // SUBACK, a retained message's PUBACK) waits until they took it (`held.rs`).
        for ring in 0..self.rings.len() {
            loop {
                let mut batch = std::mem::take(&mut self.completions);
                self.rings[ring].reap(&mut batch, REAP_BATCH);
                let reaped = batch.len();
                for completion in batch.iter() {
                    self.complete(ring, *completion);
                }
                self.completions = batch;
                if reaped < REAP_BATCH {
                    break;
                }
                // A long run of completions: the mesh's turn between batches.
                self.drain_mesh();
            }
        }
        self.drain_mesh();
        self.run_subscribe_jobs();
        if self.timer_due {
            self.timer_due = false;
            self.expire_timers();
        }
        self.rearm_recvs();
        // Never left disarmed (see accept.rs): a connection nobody accepts waits in the
        // listen backlog, unanswered.
        let step = self.accept.turn_ends();
        self.step_accept(step);
        if self.durable.is_some() {
            self.release_voided();
        }
        if self.wake_targets() {
            // A SUBACK released just now (`held.rs`): its retained messages go out in the same
            // flush, before any live message that a publisher sends once it sees the SUBACK
            // could overtake them ([MQTT-3.3.1-6]; clients expect them right after it). Their
            // connection's packets that waited behind the SUBSCRIBE may push to the mesh:
            // wake for those too.
            self.run_subscribe_jobs();
            self.wake_targets();
        }
        self.flush_outboxes();
        self.record_latency();
        // Persistence off: this one predictable branch is all it costs.
        if self.durable.is_some() {
            self.durable_turn_ends();
        }
        Ok(())
    }

    /// The messages this turn wrote to outboxes waited from the turn's start (their recv, or
    /// their take from the mesh, was reaped then) to now (their sends are submitted): one
    /// clock read for all of them. A message behind a send still in flight goes out on a
    /// later turn, so this is the shard's own share of the wait, not the socket's.
    fn record_latency(&mut self) {
        let Some(latency) = self.latency.as_deref_mut() else {
            return;
        };
        let written = self.stats.messages_out - self.turn_messages_out;
        if written > 0 {
            let now_ns = self.clock.elapsed().as_nanos() as u64;
            let wait_ns = now_ns.saturating_sub(self.turn_started_ns);
            latency.receive_to_send.record(wait_ns, written);
        }
    }

    /// A time on the shard clock (ns) in µs since `stats::epoch()`, as forwards carry it: 32
    /// bits wrap after 71 minutes, and a difference of two is taken wrapping.
    fn epoch_us(&self, clock_ns: u64) -> u32 {
        ((clock_ns + self.clock_offset_ns) / 1000) as u32
    }

    /// A completion reaped from ring `ring`.
    fn complete(&mut self, ring: usize, completion: Completion) {
        let Some(token) = Token::unpack(completion.user_data) else {
            return;
        };
        match token.op {
            Op::Accept => self.on_accept(token, completion),
            Op::Recv => self.on_recv(token, completion),
            Op::Send => self.on_send(token, completion),
            Op::Shutdown | Op::Cancel => self.on_control(token),
            // The entry was freed before the close was submitted; the slot is free now.
            Op::Close => self.on_slot_closed(token),
            Op::Timer => self.on_timer(),
            Op::Wake => self.on_wake(),
            // The secondary rings are polled every turn; this read only woke the primary.
            Op::RingWake => self.arm_ring_wake(),
            // The cancelled accept's own last completion says all there is to say.
            Op::AcceptCancel => {}
            Op::HandOffSend => self.on_handoff_send(token, completion),
            Op::HandOffFd => self.on_handoff_fd(ring, completion),
            // Only ended the wait: the turn drains the mesh anyway. On the sender, a failed
            // wake (the target is stopping) needs nothing either.
            Op::MeshWake => {}
            // Read when it was submitted (`Ring::peer_addr`).
            Op::PeerName => {}
            Op::LogWrite | Op::LogSync | Op::LogTimer => self.on_log(token.op, completion.result),
            Op::CompactRead | Op::CompactWrite | Op::CompactSync => {
                if let Some(durable) = self.durable.as_deref_mut() {
                    durable.on_compact(&mut self.rings[0], token.op, completion.result);
                }
            }
        }
    }

    /// A completion of the persistence log: acks held for its records may go out now.
    fn on_log(&mut self, op: Op, result: i32) {
        let Some(durable) = self.durable.as_deref_mut() else {
            return;
        };
        let advanced = match op {
            Op::LogWrite => durable.on_write(&mut self.rings[0], result),
            Op::LogSync => durable.on_sync(result),
            _ => {
                durable.on_timer();
                false
            }
        };
        if advanced {
            if op == Op::LogSync {
                self.on_durable_sync();
            }
            self.release_held();
        }
    }

    /// Records on disk, for acks held on `durable::DISK`: all of them without persistence.
    fn durable_upto(&self) -> u64 {
        self.durable
            .as_deref()
            .map_or(u64::MAX, durable::Durable::durable)
    }

    /// Appends a retained message's record (set, or delete when `payload` is empty); the ack
    /// of the packet being handled waits for it with `sync = "ack"`.
    fn log_retained(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        properties: Option<&Arc<crate::protocol::Properties>>,
    ) {
        let Some(durable) = self.durable.as_deref_mut() else {
            return;
        };
        if topic.starts_with("$SYS/") {
            // The broker's own (`sys.rs`), published again after every start: not worth a
            // record every `sys_interval_secs`, and stale once restored.
            return;
        }
        let record = durable.append_retained(topic, payload, qos, properties.map(|p| &**p));
        if durable.acks_wait() {
            self.held
                .record(usize::from(durable::DISK), record as usize);
        }
    }

    /// Every id the slabs have room for, ring by ring (most are empty or live).
    fn conn_ids(&self) -> impl Iterator<Item = u32> {
        let slots: Vec<u32> = (0..self.conns.ring_count())
            .map(|ring| self.conns.ring_slots(ring))
            .collect();
        slots
            .into_iter()
            .enumerate()
            .flat_map(|(ring, count)| (0..count).map(move |slot| conn_id(ring, slot)))
    }

    /// The primary ring keeps a read armed on the eventfd the secondary rings signal.
    fn arm_ring_wake(&mut self) {
        let Some(fd) = self.ring_wake.as_ref().map(|fd| fd.as_raw_fd()) else {
            return;
        };
        let buf: *mut u64 = &mut *self.ring_wake_buf;
        // SAFETY: as for `wake_buf`.
        unsafe { self.rings[0].read_eventfd(fd, buf, Token::shard(Op::RingWake)) };
    }

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        // SAFETY: the box lives as long as the shard, which outlives the ring's requests
        // (`stop_all` cancels them before the shard is dropped).
        unsafe {
            self.rings[0].read_eventfd(self.waker.fd.as_raw_fd(), buf, Token::shard(Op::Wake))
        };
    }

    fn arm_timer(&mut self) {
        let tick: *const Timespec = &*self.tick;
        // SAFETY: as for `wake_buf`.
        unsafe { self.rings[0].timeout(tick, Token::shard(Op::Timer)) };
    }

    fn on_wake(&mut self) {
        if self.waker.stop_requested() {
            self.stopping = true;
        } else {
            self.arm_wake();
        }
    }

    fn on_timer(&mut self) {
        self.timer_due = true;
        self.arm_timer();
    }

    /// Copies the counters where other threads can read them, levels measured first.
    fn publish_stats(&mut self) {
        let stats = &mut self.stats;
        stats.sessions = self.sessions.len() as u64;
        stats.subscriptions = (self.subscriptions.len() + self.shared.member_count()) as u64;
        stats.retained_messages = self.retained.len() as u64;
        stats.ring_slots_used = self.conns.len() as u64;
        stats.ring_slots = u64::from(self.files) * self.rings.len() as u64;
        let latency = self.latency.as_deref();
        self.board.publish(
            self.index,
            &self.stats,
            latency.unwrap_or(&stats::ShardLatency::default()),
        );
    }

    fn expire_timers(&mut self) {
        self.publish_stats();
        self.accept.on_tick();
        let now_ms = self.now_ms;
        let connect_timeout_secs = self.config.limits.connect_timeout_secs;
        let outbox_stall_secs = self.config.limits.outbox_stall_secs;
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        for slot in self.conn_ids() {
            let Some((generation, conn)) = self.conns.at(slot) else {
                continue;
            };
            match conn.state {
                ConnState::AwaitConnect => {
                    if timer::connect_expired(conn.last_packet_ms, connect_timeout_secs, now_ms) {
                        expired.push((slot, generation, CloseReason::ConnectTimeout));
                    }
                }
                ConnState::Connected => {
                    if conn.recv_paused.any() {
                        // Keepalive is suspended while we do not read (`backpressure.rs`).
                        if backpressure::conn_stalled(conn, outbox_stall_secs, now_ms) {
                            expired.push((slot, generation, CloseReason::OutboxStalled));
                        }
                    } else if timer::keepalive_expired(
                        conn.last_packet_ms,
                        conn.keepalive_secs,
                        now_ms,
                    ) {
                        expired.push((slot, generation, CloseReason::KeepaliveTimeout));
                    }
                    // QoS 1/2 state that went idle is freed here, not per ack; a message in
                    // flight across a tick stops pinning its receive block.
                    if let Some(session) = self.sessions.get_mut(conn.session) {
                        session.unpin_inflight();
                        session.trim();
                    }
                }
                // Its CONNECT is in, but the hand-off may never finish (`abandon_handoff`):
                // bounded by the connect deadline too, from the CONNECT.
                ConnState::HandingOff => {
                    if timer::connect_expired(conn.last_packet_ms, connect_timeout_secs, now_ms) {
                        expired.push((slot, generation, CloseReason::HandOffFailed));
                    }
                }
                ConnState::Closing => {
                    let overdue_ms = conn.last_packet_ms + 2 * timer::TICK_MS;
                    let flush_overdue = conn.close_after_flush && !conn.shutdown_sent;
                    let linger_over = conn.lingers()
                        && conn.shutdown_sent
                        && now_ms >= conn.last_packet_ms + timer::LINGER_MS;
                    if flush_overdue && now_ms >= overdue_ms || linger_over {
                        expired.push((slot, generation, CloseReason::Refused));
                    }
                }
            }
        }
        for &(slot, generation, reason) in &expired {
            match reason {
                CloseReason::OutboxStalled => self.note_outbox_stall(),
                CloseReason::HandOffFailed => {
                    self.abandon_handoff(slot, generation);
                    continue;
                }
                _ => {}
            }
            let closing = self
                .conns
                .get(slot, generation)
                .is_some_and(|c| c.state == ConnState::Closing);
            if closing {
                self.close_overdue(slot, generation);
                continue;
            }
            self.close(slot, generation, reason);
        }
        self.expired = expired;
        self.expire_sessions();
        self.expire_retained();
        self.publish_due_wills();
        self.publish_sys_tree();
        self.log_tick();
    }

    /// Stop: every connection is shut down without wills (the broker is going away, not the
    /// clients), in-flight operations are cancelled and waited for, then the ring is dropped.
    /// True when every ring confirmed that nothing is in flight any more.
    fn stop_all(&mut self) -> bool {
        for slot in self.conn_ids() {
            if let Some((generation, _)) = self.conns.at(slot) {
                self.end_linger(slot, generation);
                self.shutdown(slot, generation);
            }
        }
        let mut ended = true;
        for ring in &mut self.rings {
            let _ = ring.submit_and_wait(0);
            ended &= ring.cancel_all();
        }
        ended
    }

    /// After `run` panicked or failed: what `run` does on its way out (`stop_all`, then the
    /// counters published), from whatever state the failure left. Nothing here relies on more
    /// than the slabs being walkable: shutting a connection down reads its flags and queues
    /// entries. True when every operation ended; false, or a panic here, and the shard must
    /// not be dropped (the kernel may still write into its buffers; see `broker.rs`).
    pub fn stop_after_failure(&mut self) -> bool {
        crate::broker::panic_in_cleanup_if_test_asks();
        self.stopping = true;
        let ended = self.stop_all();
        self.publish_stats();
        ended
    }
}
