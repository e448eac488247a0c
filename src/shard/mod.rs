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
//! MQTT handling lives in `handle.rs`; mesh routing in `meshing.rs`; this file is the I/O side.

mod accept;
mod backpressure;
mod close;
pub mod conn;
mod handle;
mod handoff;
mod held;
mod limits;
mod meshing;
pub mod peers;
pub mod route;
mod sessions;
#[doc(hidden)]
pub mod sim;
pub mod stats;
mod subscribe;
pub mod timer;

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use bytestring::ByteString;
use io_uring::types::Timespec;

use crate::auth::PasswordFile;
use crate::config::Config;
use crate::mesh::{InterestIndex, LocalInterest, MeshMessage, ShardMesh};
use crate::protocol::{self, DecodeError, Packet, Properties, QoS};
use crate::ring::{Completion, Op, Ring, RingSizes, Token};
use crate::session::Message;
use crate::topic::retained::RetainedStore;
use crate::topic::trie::Trie;

use close::CloseReason;
use conn::{conn_id, ring_of, slot_of, ConnState, Conns, Pools};
use route::{SharedInterest, SharedSubscriptions};
use sessions::Sessions;
pub use stats::ShardStats;

/// A new outbox buffer's capacity (when the pool has none to reuse).
const OUTBOX_INITIAL: usize = 512;
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
    pub listener: TcpListener,
    pub waker: Arc<Waker>,
    pub auth: Option<Arc<PasswordFile>>,
    /// Fixed-file slots for the ring.
    pub files: u32,
    /// Where the shard publishes a copy of its counters once a second (and when it stops),
    /// for `Broker::stats` and a metrics endpoint: the hot path keeps plain integers.
    pub published_stats: Arc<Mutex<ShardStats>>,
    /// This shard's ends of the mesh (`Mesh::new(1, ..)` for a single shard: no rings).
    pub mesh: ShardMesh,
    pub peers: Arc<peers::Peers>,
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
    listener: TcpListener,
    waker: Arc<Waker>,
    /// The eventfd read's 8-byte buffer; boxed so it stays put while the read is in flight.
    wake_buf: Box<u64>,
    /// The timer's timespec; boxed for the same reason.
    tick: Box<Timespec>,
    auth: Option<Arc<PasswordFile>>,
    conns: Conns,
    sessions: Sessions,
    subscriptions: Trie<QoS>,
    shared: SharedSubscriptions,
    retained: RetainedStore<Message>,
    /// Receive arena: bytes are copied here from the provided buffer, then split off and
    /// frozen, so decoded payloads share it instead of being copied again.
    arena: BytesMut,
    /// Where the arena's current block starts: a reserve that lands elsewhere allocated.
    arena_block: usize,
    pools: Pools,
    /// Connections whose outbox filled this turn.
    dirty: Vec<(u32, u32)>,
    /// Connections whose multishot recv ended for lack of buffers; re-armed at turn end.
    recv_rearm: Vec<(u32, u32)>,
    completions: Vec<Completion>,
    /// Scratch for routing: (session, granted QoS) pairs, and shared group ids.
    matches: Vec<(u32, QoS)>,
    group_ids: Vec<u32>,
    /// Scratch for the timer sweep.
    expired: Vec<(u32, u32, CloseReason)>,
    /// Encode once: a QoS 0 message's bytes per layout (3.1.x, 5.0), valid for one route.
    qos0_encoded: [BytesMut; 2],
    qos0_ready: [bool; 2],
    /// A copy of the routed message's topic and payload outside the receive arena, made once
    /// per route when a subscriber queues the message.
    unpinned: Option<(ByteString, bytes::Bytes)>,
    no_properties: Properties,
    recv_paused_logged: bool,
    outbox_stall_logged: bool,
    timer_due: bool,
    stopping: bool,
    clock: Instant,
    now_ms: u64,
    next_client_number: u64,
    stats: ShardStats,
    published_stats: Arc<Mutex<ShardStats>>,
    shard_count: usize,
    mesh: ShardMesh,
    peers: Arc<peers::Peers>,
    /// Filter -> shards with subscribers (replicated), and this shard's counts that feed it.
    interest: InterestIndex,
    local_interest: LocalInterest,
    /// `$share` group -> shards with members (replicated).
    shared_interest: SharedInterest,
    /// Scratch: messages taken from the mesh this batch; (group, shard) picks of one route.
    mesh_inbox: Vec<MeshMessage>,
    shared_assigned: Vec<(ByteString, usize)>,
    handoffs_out: handoff::HandOffsOut,
    handoffs_in: peers::HandOffsIn,
    handoff_sequence: u32,
    handoff_error_logged: bool,
    connect_too_large_logged: bool,
    /// Bit per `limits::LimitHit` already logged.
    limits_logged: u32,
    /// Acks waiting for other shards to take what their packets caused (`held.rs`).
    held: held::HeldAcks,
    /// SUBSCRIBEs handled a slice per turn (`subscribe.rs`), and scratch for their retained
    /// messages.
    subscribe_jobs: subscribe::SubscribeJobs,
    retained_scratch: Vec<Message>,
}

impl Shard {
    /// Builds the shard and its ring on the calling thread, which must be the thread that then
    /// calls `run` (the ring is single-issuer).
    pub fn new(params: ShardParams) -> io::Result<Shard> {
        let sizes = RingSizes {
            entries: params.config.ring_entries,
            files: params.files,
            recv_buffer_count: params.config.recv_buffer_count,
            recv_buffer_size: params.config.recv_buffer_size,
        };
        let rings = (0..params.config.rings_per_shard.max(1))
            .map(|_| Ring::new(sizes))
            .collect::<io::Result<Vec<Ring>>>()?;
        Shard::with_rings(params, rings)
    }

    /// The shard on rings built by the caller: `new`'s, or simulated ones (`sim`).
    fn with_rings(params: ShardParams, rings: Vec<Ring>) -> io::Result<Shard> {
        let config = params.config;
        let ring_count = rings.len();
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
        Ok(Shard {
            index: params.index,
            config,
            rings,
            files: params.files,
            accept: accept::Accept::new(ring_count, params.files),
            ring_wake,
            ring_wake_buf: Box::new(0),
            listener: params.listener,
            waker: params.waker,
            wake_buf: Box::new(0),
            tick: Box::new(Timespec::from(std::time::Duration::from_millis(
                timer::TICK_MS,
            ))),
            auth: params.auth,
            conns: Conns::default(),
            sessions: Sessions::default(),
            subscriptions: Trie::new(),
            shared: SharedSubscriptions::default(),
            retained: RetainedStore::with_weigh(|message: &Message| message.payload.len()),
            arena: BytesMut::new(),
            arena_block: 0,
            pools: Pools::default(),
            dirty: Vec::new(),
            recv_rearm: Vec::new(),
            completions: Vec::with_capacity(REAP_BATCH),
            matches: Vec::new(),
            group_ids: Vec::new(),
            expired: Vec::new(),
            qos0_encoded: [BytesMut::new(), BytesMut::new()],
            qos0_ready: [false; 2],
            unpinned: None,
            no_properties: Properties::default(),
            recv_paused_logged: false,
            outbox_stall_logged: false,
            timer_due: false,
            stopping: false,
            clock: Instant::now(),
            now_ms: 0,
            next_client_number: 0,
            stats: ShardStats::default(),
            published_stats: params.published_stats,
            shard_count: params.mesh.shard_count(),
            interest: InterestIndex::new(params.mesh.shard_count()),
            mesh: params.mesh,
            peers: params.peers,
            local_interest: LocalInterest::new(),
            shared_interest: SharedInterest::default(),
            mesh_inbox: Vec::new(),
            shared_assigned: Vec::new(),
            handoffs_out: handoff::HandOffsOut::default(),
            handoffs_in: peers::HandOffsIn::default(),
            handoff_sequence: 0,
            handoff_error_logged: false,
            connect_too_large_logged: false,
            limits_logged: 0,
            held: held::HeldAcks::default(),
            subscribe_jobs: subscribe::SubscribeJobs::default(),
            retained_scratch: Vec::new(),
        })
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
            self.turn()?;
        }
        self.stop_all();
        self.publish_stats();
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
        self.now_ms = self.clock.elapsed().as_millis() as u64;
        for ring in 0..self.rings.len() {
            loop {
                // Interest changes first: a publish in this batch may have been caused by
                // a SUBACK sent after the change was pushed.
                self.drain_mesh();
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
        self.wake_targets();
        self.flush_outboxes();
        Ok(())
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

    fn on_recv(&mut self, token: Token, completion: Completion) {
        let buffer_id = completion.buffer_id();
        let Some(conn) = self.conns.get_mut(token.slot, token.generation) else {
            // Cannot happen while the slot waits for the recv's last completion; be safe.
            if let Some(bid) = buffer_id {
                self.rings[ring_of(token.slot)].recycle(bid);
            }
            return;
        };
        if conn.state == ConnState::HandingOff {
            self.on_recv_handing_off(token, completion);
            return;
        }
        if !completion.more() {
            conn.recv_armed = false;
            conn.recv_cancelling = false;
        }
        let result = completion.result;
        if result > 0 {
            let Some(bid) = buffer_id else {
                return;
            };
            if conn.state == ConnState::Closing {
                self.rings[ring_of(token.slot)].recycle(bid);
                self.maybe_release(token.slot, token.generation);
                return;
            }
            // Before CONNECT the deadline runs from the accept: bytes trickling in must not
            // keep a connection that never completes its CONNECT (issue 7).
            if conn.state == ConnState::Connected {
                conn.last_packet_ms = self.now_ms;
            }
            let bytes = self.rings[ring_of(token.slot)].buffer(bid, result as usize);
            // The only copy: kernel's provided buffer -> the arena (or, behind a partial
            // packet, the connection's inbox). The buffer goes straight back to the kernel.
            let partial = conn.buffers.as_mut().filter(|b| !b.inbox.is_empty());
            let from_inbox = partial.is_some();
            let buf = if let Some(buffers) = partial {
                buffers.inbox.extend_from_slice(bytes);
                std::mem::take(&mut buffers.inbox)
            } else {
                if self.arena.capacity() - self.arena.len() < bytes.len() {
                    // Reclaims the current block in place once every payload cut from it is
                    // gone; allocates a fresh one only while some are still held.
                    self.arena.reserve(ARENA_BLOCK.max(bytes.len()));
                    let block = self.arena.as_ptr() as usize;
                    if block != self.arena_block {
                        self.arena_block = block;
                        self.stats.arena_blocks_allocated += 1;
                    }
                }
                self.arena.extend_from_slice(bytes);
                self.arena.split()
            };
            self.rings[ring_of(token.slot)].recycle(bid);
            let rearm = !completion.more();
            self.on_bytes(token.slot, token.generation, buf, from_inbox);
            if rearm {
                self.rearm_recv(token.slot, token.generation);
            }
            return;
        }
        if result == -libc::ENOBUFS && conn.state != ConnState::Closing {
            // The buffer ring ran dry this turn; buffers come back as soon as the turn's bytes
            // are copied out, so re-arm at the end of the turn.
            self.stats.recv_nobufs_count += 1;
            self.recv_rearm.push((token.slot, token.generation));
            return;
        }
        if completion.more() {
            return;
        }
        if result == -libc::ECANCELED && conn.state != ConnState::Closing {
            // A pause's cancel landed (`backpressure.rs`); reading resumed meanwhile if the
            // connection is no longer paused.
            self.rearm_recv(token.slot, token.generation);
            return;
        }
        // End of stream (0), reset, cancel after our shutdown, or another error.
        if conn.state == ConnState::Closing {
            self.maybe_release(token.slot, token.generation);
        } else {
            self.close(token.slot, token.generation, CloseReason::Io);
        }
    }

    /// Decodes every whole packet in `buf` and handles it; keeps a partial tail in the inbox,
    /// copied into a buffer of its own so the arena block is not pinned by it.
    fn on_bytes(&mut self, slot: u32, generation: u32, mut buf: BytesMut, from_inbox: bool) {
        let packet_size_max = self.config.limits.packet_size_max;
        // Before its CONNECT a client is nobody: it may make the broker buffer one CONNECT's
        // worth, no more (issue 7).
        let connect_size_max = packet_size_max.min(self.config.limits.connect_packet_size_max);
        // Whole packets were taken from the front of `buf` in this call.
        let mut consumed = false;
        loop {
            let Some(conn) = self.conns.get_mut(slot, generation) else {
                return;
            };
            if matches!(conn.state, ConnState::Closing | ConnState::HandingOff) {
                return;
            }
            // Before its CONNECT is read, a connection may belong to another shard: keep the
            // bytes from the CONNECT on, to hand them over with the socket (once per connection).
            let awaiting_connect = conn.state == ConnState::AwaitConnect;
            let snapshot = (awaiting_connect && self.shard_count > 1).then(|| buf.clone());
            let size_max = if awaiting_connect {
                connect_size_max
            } else {
                packet_size_max
            };
            match protocol::decode(&mut buf, conn.version, size_max) {
                Ok(Some(packet)) => {
                    consumed = true;
                    if awaiting_connect {
                        // The CONNECT is in: keepalive counts from here, not from the accept.
                        conn.last_packet_ms = self.now_ms;
                    }
                    if let (Some(snapshot), Packet::Connect(connect)) = (snapshot, &packet) {
                        if let Some(home) = self.foreign_home(&connect.client_id) {
                            self.begin_handoff(slot, generation, home, snapshot);
                            return;
                        }
                    }
                    self.handle(slot, generation, packet)
                }
                Ok(None) => {
                    if buf.is_empty() {
                        conn.trim(&mut self.pools);
                        return;
                    }
                    if from_inbox && !consumed {
                        // Still the one partial packet in the connection's own buffer: keep
                        // growing it, no copy.
                        conn.buffers(&mut self.pools).inbox = buf;
                        return;
                    }
                    // A tail behind whole packets: into a buffer of its own, sized to what
                    // arrived, so neither an arena block nor a large packet's buffer stays
                    // pinned by a few bytes.
                    conn.buffers(&mut self.pools).inbox = conn::partial_inbox(&buf);
                    return;
                }
                Err(error) => {
                    if awaiting_connect && matches!(error, DecodeError::PacketTooLarge { .. }) {
                        self.stats.connect_too_large_count += 1;
                        if !self.connect_too_large_logged {
                            self.connect_too_large_logged = true;
                            eprintln!(
                                "ringmq: shard {}: a CONNECT over connect_packet_size_max \
                                 ({connect_size_max} B): connection closed (counted; raise the \
                                 limit for large wills or passwords)",
                                self.index
                            );
                        }
                    }
                    self.on_decode_error(slot, generation, error);
                    return;
                }
            }
        }
    }

    fn rearm_recv(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if matches!(conn.state, ConnState::Closing | ConnState::HandingOff)
            || conn.recv_armed
            || conn.recv_paused
        {
            return;
        }
        conn.recv_armed = true;
        self.rings[ring_of(slot)].recv_multi(slot_of(slot), Token::new(Op::Recv, slot, generation));
    }

    fn rearm_recvs(&mut self) {
        let pending = std::mem::take(&mut self.recv_rearm);
        for &(slot, generation) in &pending {
            self.rearm_recv(slot, generation);
        }
        self.recv_rearm = pending;
        self.recv_rearm.clear();
    }

    fn on_send(&mut self, token: Token, completion: Completion) {
        let Some(conn) = self.conns.get_mut(token.slot, token.generation) else {
            return;
        };
        conn.send_in_flight = false;
        let buffers = conn.buffers(&mut self.pools);
        // A send of a non-empty buffer that moved nothing would be retried forever: treat it
        // as the error it is.
        if completion.result < 0 || (completion.result == 0 && !buffers.sending.is_empty()) {
            buffers.sending.clear();
            if conn.state == ConnState::Closing {
                // A close waiting for this flush (a refusing CONNACK) has nothing left to
                // wait for: shut down now, or the slot is never released.
                self.shutdown(token.slot, token.generation);
                self.maybe_release(token.slot, token.generation);
            } else {
                self.close(token.slot, token.generation, CloseReason::Io);
            }
            return;
        }
        let sent = (completion.result as usize).min(buffers.sending.len());
        buffers.sending.advance(sent);
        if buffers.sending.is_empty() {
            self.pools.put_outbox(std::mem::take(&mut buffers.sending));
        }
        if conn.state == ConnState::Closing && conn.shutdown_sent {
            self.maybe_release(token.slot, token.generation);
            return;
        }
        let paused = conn.recv_paused;
        // A partial send continues, a refilled outbox goes out, and a closing connection
        // whose outbox has drained is shut down: all at the end of this turn.
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push((token.slot, token.generation));
        }
        let session = conn.session;
        if paused && sent > 0 {
            self.resume_recv_if_drained(token.slot, token.generation);
        }
        if session != conn::NO_SESSION {
            self.pump(session);
        }
    }

    /// One send per connection per turn. A connection with a send in flight keeps
    /// appending; its completion puts it back on the list.
    fn flush_outboxes(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &(slot, generation) in &dirty {
            self.pause_recv_if_full(slot, generation);
            let Some(conn) = self.conns.get_mut(slot, generation) else {
                continue;
            };
            conn.dirty = false;
            if conn.send_in_flight || conn.shutdown_sent {
                continue;
            }
            let buffers = conn.buffers(&mut self.pools);
            if buffers.sending.is_empty() && !buffers.outbox.is_empty() {
                std::mem::swap(&mut buffers.sending, &mut buffers.outbox);
            }
            if !buffers.sending.is_empty() {
                let len = buffers.sending.len().min(u32::MAX as usize) as u32;
                let ptr = buffers.sending.as_ptr();
                conn.send_in_flight = true;
                // SAFETY: `sending` is not touched until this send completes (`on_send`), and
                // the connection is not freed while `send_in_flight` (`maybe_release`).
                unsafe {
                    self.rings[ring_of(slot)].send(
                        slot_of(slot),
                        ptr,
                        len,
                        Token::new(Op::Send, slot, generation),
                    )
                };
            } else if conn.state == ConnState::Closing && conn.close_after_flush {
                self.shutdown(slot, generation);
                self.maybe_release(slot, generation);
            } else {
                // Nothing left to send: the connection went idle, its buffers go back.
                conn.trim(&mut self.pools);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Copies the counters where other threads can read them.
    fn publish_stats(&self) {
        if let Ok(mut published) = self.published_stats.lock() {
            published.clone_from(&self.stats);
        }
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
                    if conn.recv_paused {
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
                ConnState::Closing => {}
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
            self.close(slot, generation, reason);
        }
        self.expired = expired;
        self.expire_sessions();
    }

    /// Stop: every connection is shut down without wills (the broker is going away, not the
    /// clients), in-flight operations are cancelled and waited for, then the ring is dropped.
    /// True when every ring confirmed that nothing is in flight any more.
    fn stop_all(&mut self) -> bool {
        for slot in self.conn_ids() {
            if let Some((generation, _)) = self.conns.at(slot) {
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
