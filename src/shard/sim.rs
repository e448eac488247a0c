//! Shards without a kernel, for tests and fuzzing: bytes in, bytes out per connection.
//!
//! `SimBroker` builds N real shards (the real mesh and `Peers`) on simulated rings
//! (`ring::sim`) and plays the kernel's part between their turns: it accepts a client's
//! connection into a fixed-file slot, feeds the client's bytes to the armed multishot recv
//! through the provided-buffer ring (one completion per chunk written, cut to the buffer size),
//! completes sends into what the client received (or leaves them pending while the client does
//! not read), runs shutdown, cancel and close, moves a handed-off descriptor into the target
//! shard's table (MSG_RING), and fires the timer on a clock it controls. `run` alternates
//! kernel steps and shard turns until nothing moves.
//!
//! The simulated kernel is strict where the real one would silently misbehave, and panics on:
//! a second recv or send armed on one connection, an operation on an empty slot, closing or
//! handing off a slot whose recv is still armed, a send buffer that changed while in flight, a
//! buffer recycled twice. `check_bounds` compares what each shard holds against its limits, and
//! `finish` closes every client and checks that every connection was released (slots, buffers,
//! hand-offs, counters) and the shard still accepts.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io;
use std::net::TcpListener;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::mesh::Mesh;
use crate::ring::sim::{SimKernel, SimOp, CQE_BUFFER_SHIFT, CQE_F_BUFFER, CQE_F_MORE};
use crate::ring::{BufRing, Ring, RingSizes};
use crate::topic::filter::parse_shared;

use super::peers::Peers;
use super::{Shard, ShardParams, ShardStats, Waker};

/// A client's connection, by index in the order connections were opened.
pub type SocketId = usize;

/// Rounds of kernel steps and turns after which `run` calls the shards livelocked.
const ROUNDS_MAX: usize = 100_000;
/// The numbers simulated rings go by in MSG_RING entries: no real descriptor is this high.
const RING_FD_BASE: RawFd = 1 << 24;

/// One TCP connection as the simulated kernel sees it.
#[derive(Debug, Default)]
struct Socket {
    /// Bytes the client wrote and the broker has not read yet, in the chunks they were
    /// written (a recv completion never spans two chunks: where the stream is cut is the
    /// client's choice).
    inbound: VecDeque<Vec<u8>>,
    /// The client closed its side: once `inbound` is read, the broker reads end of stream.
    client_closed: bool,
    reset: bool,
    /// The client reads: sends complete. Otherwise they stay in flight (a full socket buffer).
    reading: bool,
    /// At most this many bytes per send completion (a partial send); 0 = the whole send.
    send_cut: usize,
    received: Vec<u8>,
    /// The broker shut the socket down (SHUT_RDWR).
    shut_down: bool,
    /// Fixed-file slots holding the socket: one, two during a hand-off, none once closed.
    refs: u32,
    /// Closed on the broker's side: its last slot closed, or refused by a full table.
    closed: bool,
}

struct PendingSend {
    buf: *const u8,
    len: u32,
    user_data: u64,
    /// The bytes at submission, to check the buffer stayed put.
    bytes: Vec<u8>,
}

/// What one simulated ring's kernel holds in flight (besides the queues in `SimKernel`).
#[derive(Default)]
struct RingFlight {
    accept: Option<u64>,
    recvs: BTreeMap<u32, u64>,
    sends: BTreeMap<u32, PendingSend>,
    timers: Vec<u64>,
    reads: Vec<u64>,
}

/// What the shards hold, for the memory checks and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub connections: usize,
    pub inbox_bytes_max: usize,
    pub pending_bytes_max: usize,
    pub sessions: usize,
    pub session_queue_max: usize,
    pub inflight_max: usize,
    pub mesh_overflow: usize,
    pub handoffs_pending: usize,
}

/// The token an operation carries, for the trace.
fn describe(op: SimOp) -> String {
    let user_data = match op {
        SimOp::AcceptMulti { user_data }
        | SimOp::RecvMulti { user_data, .. }
        | SimOp::Send { user_data, .. }
        | SimOp::Shutdown { user_data, .. }
        | SimOp::Cancel { user_data, .. }
        | SimOp::Close { user_data, .. }
        | SimOp::Timeout { user_data }
        | SimOp::Read { user_data, .. }
        | SimOp::SendFd { user_data, .. }
        | SimOp::MsgData { user_data, .. } => user_data,
    };
    format!("{:?}", crate::ring::Token::unpack(user_data))
}

/// N shards on simulated rings, and their clients' sockets.
pub struct SimBroker {
    shards: Vec<Shard>,
    flights: Vec<Vec<RingFlight>>,
    sockets: Vec<Socket>,
    /// Per shard: connections waiting in its listener's backlog for an accept.
    backlog: Vec<VecDeque<SocketId>>,
    rings_per_shard: usize,
    limits: crate::config::Limits,
    now_ms: u64,
    /// Recv completions one armed recv gets per kernel step.
    recv_burst_max: usize,
    turns: u64,
    /// Print every operation and completion to stderr (`set_trace`), to read a failing input.
    trace: bool,
}

/// One real listening socket for every simulated shard of the process: a shard holds one,
/// and only its number is ever used (it names the accept's listener).
fn listener() -> io::Result<TcpListener> {
    static LISTENER: OnceLock<TcpListener> = OnceLock::new();
    if let Some(listener) = LISTENER.get() {
        return listener.try_clone();
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let _ = LISTENER.set(listener.try_clone()?);
    Ok(listener)
}

fn ring_fd(shard: usize, ring: usize, rings_per_shard: usize) -> RawFd {
    RING_FD_BASE + (shard * rings_per_shard + ring) as RawFd
}

impl SimBroker {
    /// `config.shards` shards (0 counts as 1) with `config.rings_per_shard` rings of
    /// `config.ring_files_max` slots each (0 is taken as 64), wired like `Broker::start` does.
    pub fn new(config: Config) -> io::Result<SimBroker> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let shard_count = config.shards.max(1);
        let rings_per_shard = config.rings_per_shard.max(1);
        let files = match config.ring_files_max {
            0 => 64,
            n => n,
        };
        let sizes = RingSizes {
            entries: config.ring_entries,
            files,
            recv_buffer_count: config.recv_buffer_count,
            recv_buffer_size: config.recv_buffer_size,
        };
        let wakers = (0..shard_count)
            .map(|_| Waker::new())
            .collect::<io::Result<Vec<_>>>()?;
        let peers = Peers::new(wakers.clone(), rings_per_shard);
        let meshes = Mesh::new(shard_count, config.limits.mesh_ring_capacity as usize);
        let mut shards = Vec::with_capacity(shard_count);
        for (index, (mesh, waker)) in meshes.into_iter().zip(wakers).enumerate() {
            let rings = (0..rings_per_shard)
                .map(|ring| Ring::simulated(sizes, ring_fd(index, ring, rings_per_shard)))
                .collect::<io::Result<Vec<Ring>>>()?;
            let params = ShardParams {
                index,
                config: config.clone(),
                listener: listener()?,
                waker,
                auth: None,
                files,
                published_stats: Arc::new(Mutex::new(ShardStats::default())),
                mesh,
                peers: peers.clone(),
            };
            let shard = Shard::with_rings(params, rings)?;
            for (ring, fd) in shard.ring_fds().into_iter().enumerate() {
                peers.set_ring_fd(index, ring, fd);
            }
            shards.push(shard);
        }
        let mut sim = SimBroker {
            flights: (0..shard_count)
                .map(|_| {
                    (0..rings_per_shard)
                        .map(|_| RingFlight::default())
                        .collect()
                })
                .collect(),
            shards,
            sockets: Vec::new(),
            backlog: vec![VecDeque::new(); shard_count],
            rings_per_shard,
            limits: config.limits.clone(),
            now_ms: 0,
            recv_burst_max: 4,
            turns: 0,
            trace: false,
        };
        for shard in &mut sim.shards {
            shard.arm();
        }
        sim.run();
        Ok(sim)
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Recv completions one connection gets per kernel step (at least 1): few make the
    /// shard see bytes trickle in over several turns, many exhaust the provided buffers.
    pub fn set_recv_burst_max(&mut self, burst: usize) {
        self.recv_burst_max = burst.max(1);
    }

    /// Prints every operation, completion and client action to stderr.
    pub fn set_trace(&mut self, trace: bool) {
        self.trace = trace;
    }

    /// Shard turns run so far.
    pub fn turns(&self) -> u64 {
        self.turns
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards
            .iter()
            .map(|shard| shard.stats.clone())
            .collect()
    }

    /// A client connects to `shard`'s listener; accepted on the shard's next kernel step.
    pub fn connect(&mut self, shard: usize) -> SocketId {
        let id = self.sockets.len();
        if self.trace {
            eprintln!("client: socket {id} connects to shard {shard}");
        }
        self.sockets.push(Socket {
            reading: true,
            ..Socket::default()
        });
        self.backlog[shard % self.shards.len()].push_back(id);
        id
    }

    /// The client writes `bytes` (one recv completion per buffer's worth at most).
    pub fn write(&mut self, socket: SocketId, bytes: &[u8]) {
        if self.trace {
            eprintln!("client: socket {socket} writes {bytes:02x?}");
        }
        let socket = &mut self.sockets[socket];
        if !bytes.is_empty() && !socket.client_closed && !socket.reset && !socket.closed {
            socket.inbound.push_back(bytes.to_vec());
        }
    }

    /// The client closes its side (FIN).
    pub fn close(&mut self, socket: SocketId) {
        if self.trace {
            eprintln!("client: socket {socket} closes");
        }
        self.sockets[socket].client_closed = true;
    }

    /// The client resets the connection: unread bytes are lost, operations fail.
    pub fn reset(&mut self, socket: SocketId) {
        if self.trace {
            eprintln!("client: socket {socket} resets");
        }
        let socket = &mut self.sockets[socket];
        socket.reset = true;
        socket.inbound.clear();
    }

    /// Whether the client reads; while it does not, the broker's sends stay in flight.
    pub fn set_reading(&mut self, socket: SocketId, reading: bool) {
        if self.trace {
            eprintln!("client: socket {socket} reading {reading}");
        }
        self.sockets[socket].reading = reading;
    }

    /// Each send completes with at most `bytes` bytes (0: whole sends).
    pub fn set_send_cut(&mut self, socket: SocketId, bytes: usize) {
        self.sockets[socket].send_cut = bytes;
    }

    /// Everything the broker sent on `socket` so far.
    pub fn received(&self, socket: SocketId) -> &[u8] {
        &self.sockets[socket].received
    }

    /// The broker closed the connection (its last slot is closed).
    pub fn is_closed(&self, socket: SocketId) -> bool {
        self.sockets[socket].closed
    }

    /// Time passes: every shard's pending timer fires (the tick is coarse; the shard reads
    /// the clock).
    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        if self.trace {
            eprintln!("clock: {} ms", self.now_ms);
        }
        for shard in 0..self.shards.len() {
            for ring in 0..self.rings_per_shard {
                let timers = std::mem::take(&mut self.flights[shard][ring].timers);
                for user_data in timers {
                    self.kernel(shard, ring).post(user_data, -libc::ETIME, 0);
                }
            }
        }
    }

    /// Kernel steps and shard turns until nothing moves.
    pub fn run(&mut self) {
        for _ in 0..ROUNDS_MAX {
            let mut busy = false;
            for shard in 0..self.shards.len() {
                for ring in 0..self.rings_per_shard {
                    busy |= self.kernel_step(shard, ring);
                }
            }
            for shard in 0..self.shards.len() {
                if self.has_work(shard) {
                    busy = true;
                    self.turn(shard);
                }
            }
            if !busy {
                return;
            }
        }
        panic!("the shards still work after {ROUNDS_MAX} rounds: a livelock");
    }

    fn has_work(&mut self, shard: usize) -> bool {
        let shard = &mut self.shards[shard];
        shard.rings.iter_mut().any(Ring::has_completions)
            || shard.mesh.inbound_len() > 0
            || shard.mesh.overflow_total() > 0
    }

    fn turn(&mut self, shard: usize) {
        let now_ms = self.now_ms;
        if self.trace {
            for ring in 0..self.rings_per_shard {
                for c in self.kernel(shard, ring).completions() {
                    let token = crate::ring::Token::unpack(c.user_data);
                    eprintln!(
                        "shard {shard} ring {ring}: completion {token:?} result {} flags {:#x}",
                        c.result, c.flags
                    );
                }
            }
            eprintln!("shard {shard}: turn at {now_ms} ms");
        }
        let shard = &mut self.shards[shard];
        // The shard reads its clock as time elapsed since `clock`.
        shard.clock = Instant::now()
            .checked_sub(Duration::from_millis(now_ms))
            .expect("simulated time within the machine's uptime");
        shard.turn().expect("a turn on simulated rings");
        self.turns += 1;
    }

    fn kernel(&mut self, shard: usize, ring: usize) -> &mut SimKernel {
        self.shards[shard].rings[ring]
            .sim()
            .expect("a simulated ring")
            .0
    }

    fn kernel_and_buffers(&mut self, shard: usize, ring: usize) -> (&mut SimKernel, &mut BufRing) {
        self.shards[shard].rings[ring]
            .sim()
            .expect("a simulated ring")
    }

    /// The ring a MSG_RING entry names.
    fn ring_at(&self, fd: RawFd) -> Option<(usize, usize)> {
        let index = usize::try_from(fd.checked_sub(RING_FD_BASE)?).ok()?;
        let shard = index / self.rings_per_shard;
        (shard < self.shards.len()).then_some((shard, index % self.rings_per_shard))
    }

    /// The kernel's side of one ring: takes what was submitted, then moves what can move.
    fn kernel_step(&mut self, shard: usize, ring: usize) -> bool {
        let mut busy = false;
        while let Some(op) = self.kernel(shard, ring).take_submitted() {
            busy = true;
            self.submitted(shard, ring, op);
        }
        busy | self.deliver(shard, ring)
    }

    fn socket_in(&mut self, shard: usize, ring: usize, slot: u32, what: &str) -> SocketId {
        match self.kernel(shard, ring).file(slot) {
            Some(socket) => socket as SocketId,
            None => panic!("shard {shard} ring {ring}: {what} on empty slot {slot}"),
        }
    }

    fn submitted(&mut self, shard: usize, ring: usize, op: SimOp) {
        let here = format!("shard {shard} ring {ring}");
        if self.trace {
            eprintln!("{here}: submitted {op:?} {}", describe(op));
        }
        match op {
            SimOp::AcceptMulti { user_data } => {
                let flight = &mut self.flights[shard][ring];
                assert!(flight.accept.is_none(), "{here}: a second accept armed");
                flight.accept = Some(user_data);
            }
            SimOp::RecvMulti { slot, user_data } => {
                self.socket_in(shard, ring, slot, "recv");
                let previous = self.flights[shard][ring].recvs.insert(slot, user_data);
                assert!(
                    previous.is_none(),
                    "{here}: a second recv armed on slot {slot}"
                );
            }
            SimOp::Send {
                slot,
                buf,
                len,
                user_data,
            } => {
                self.socket_in(shard, ring, slot, "send");
                assert!(len > 0, "{here}: an empty send on slot {slot}");
                // SAFETY: the shard keeps the buffer valid and unmoved until the completion
                // (`Ring::send`'s contract), as it must for the kernel.
                let bytes = unsafe { std::slice::from_raw_parts(buf, len as usize) }.to_vec();
                let send = PendingSend {
                    buf,
                    len,
                    user_data,
                    bytes,
                };
                let previous = self.flights[shard][ring].sends.insert(slot, send);
                assert!(
                    previous.is_none(),
                    "{here}: a second send in flight on slot {slot}"
                );
            }
            SimOp::Shutdown { slot, user_data } => {
                let socket = self.socket_in(shard, ring, slot, "shutdown");
                self.sockets[socket].shut_down = true;
                self.kernel(shard, ring).post(user_data, 0, 0);
            }
            SimOp::Cancel { target, user_data } => {
                let flight = &mut self.flights[shard][ring];
                let recv = flight
                    .recvs
                    .iter()
                    .find(|(_, &armed)| armed == target)
                    .map(|(&slot, _)| slot);
                let found = if let Some(slot) = recv {
                    flight.recvs.remove(&slot);
                    true
                } else if flight.accept == Some(target) {
                    flight.accept = None;
                    true
                } else {
                    false
                };
                // The cancel completes first; the cancelled operation's last completion
                // follows from task work.
                let kernel = self.kernel(shard, ring);
                if found {
                    kernel.post(user_data, 0, 0);
                    kernel.post(target, -libc::ECANCELED, 0);
                } else {
                    kernel.post(user_data, -libc::ENOENT, 0);
                }
            }
            SimOp::Close { slot, user_data } => {
                let flight = &self.flights[shard][ring];
                // Closing a slot ends neither a multishot recv nor a send: the socket would
                // live on, unreachable.
                assert!(
                    !flight.recvs.contains_key(&slot),
                    "{here}: slot {slot} closed while its recv is armed"
                );
                assert!(
                    !flight.sends.contains_key(&slot),
                    "{here}: slot {slot} closed with a send in flight"
                );
                let Some(socket) = self.kernel(shard, ring).remove_file(slot) else {
                    panic!("{here}: close of empty slot {slot}");
                };
                let socket = &mut self.sockets[socket as SocketId];
                socket.refs -= 1;
                if socket.refs == 0 {
                    socket.closed = true;
                }
                self.kernel(shard, ring).post(user_data, 0, 0);
            }
            SimOp::Timeout { user_data } => {
                let flight = &mut self.flights[shard][ring];
                assert!(flight.timers.is_empty(), "{here}: a second timer armed");
                flight.timers.push(user_data);
            }
            SimOp::Read { user_data, .. } => self.flights[shard][ring].reads.push(user_data),
            SimOp::SendFd {
                slot,
                target_ring_fd,
                target_user_data,
                user_data,
            } => {
                let socket = self.socket_in(shard, ring, slot, "hand-off");
                assert!(
                    !self.flights[shard][ring].recvs.contains_key(&slot),
                    "{here}: slot {slot} handed off while its recv is armed"
                );
                let Some((target, target_ring)) = self.ring_at(target_ring_fd) else {
                    self.kernel(shard, ring).post(user_data, -libc::EBADF, 0);
                    return;
                };
                match self.kernel(target, target_ring).install(socket as u64) {
                    Some(target_slot) => {
                        self.sockets[socket].refs += 1;
                        self.kernel(target, target_ring).post(
                            target_user_data,
                            target_slot as i32,
                            0,
                        );
                        self.kernel(shard, ring).post(user_data, 0, 0);
                    }
                    None => self.kernel(shard, ring).post(user_data, -libc::ENFILE, 0),
                }
            }
            SimOp::MsgData {
                target_ring_fd,
                data,
                result,
                user_data,
                skip_success,
            } => match self.ring_at(target_ring_fd) {
                Some((target, target_ring)) => {
                    self.kernel(target, target_ring).post(data, result, 0);
                    if !skip_success {
                        self.kernel(shard, ring).post(user_data, 0, 0);
                    }
                }
                None => self.kernel(shard, ring).post(user_data, -libc::EBADF, 0),
            },
        }
    }

    /// Accepts waiting connections, feeds armed recvs, completes sends.
    fn deliver(&mut self, shard: usize, ring: usize) -> bool {
        let mut busy = false;
        while let Some(user_data) = self.flights[shard][ring].accept {
            let Some(socket) = self.backlog[shard].pop_front() else {
                break;
            };
            busy = true;
            match self.kernel(shard, ring).install(socket as u64) {
                Some(slot) => {
                    let socket = &mut self.sockets[socket];
                    socket.refs = 1;
                    self.kernel(shard, ring)
                        .post(user_data, slot as i32, CQE_F_MORE);
                }
                None => {
                    // The kernel closes the connection that found the table full and ends
                    // the multishot accept.
                    self.sockets[socket].closed = true;
                    self.flights[shard][ring].accept = None;
                    self.kernel(shard, ring).post(user_data, -libc::ENFILE, 0);
                }
            }
        }
        let recvs: Vec<(u32, u64)> = self.flights[shard][ring]
            .recvs
            .iter()
            .map(|(&slot, &user_data)| (slot, user_data))
            .collect();
        for (slot, user_data) in recvs {
            busy |= self.deliver_recv(shard, ring, slot, user_data);
        }
        let slots: Vec<u32> = self.flights[shard][ring].sends.keys().copied().collect();
        for slot in slots {
            busy |= self.deliver_send(shard, ring, slot);
        }
        busy
    }

    fn deliver_recv(&mut self, shard: usize, ring: usize, slot: u32, user_data: u64) -> bool {
        let socket_id = self.socket_in(shard, ring, slot, "armed recv");
        let mut busy = false;
        for _ in 0..self.recv_burst_max {
            let socket = &mut self.sockets[socket_id];
            let (result, flags) = if socket.reset {
                (-libc::ECONNRESET, 0)
            } else if socket.shut_down {
                (0, 0)
            } else if let Some(mut chunk) = socket.inbound.pop_front() {
                let (kernel, bufs) = self.kernel_and_buffers(shard, ring);
                match kernel.recv_into_buffer(bufs, &chunk) {
                    Some((bid, len)) => {
                        chunk.drain(..len);
                        let socket = &mut self.sockets[socket_id];
                        if !chunk.is_empty() {
                            socket.inbound.push_front(chunk);
                        }
                        let flags = CQE_F_MORE | CQE_F_BUFFER | u32::from(bid) << CQE_BUFFER_SHIFT;
                        (len as i32, flags)
                    }
                    None => {
                        self.sockets[socket_id].inbound.push_front(chunk);
                        (-libc::ENOBUFS, 0)
                    }
                }
            } else if socket.client_closed {
                (0, 0)
            } else {
                break;
            };
            busy = true;
            self.kernel(shard, ring).post(user_data, result, flags);
            if flags & CQE_F_MORE == 0 {
                self.flights[shard][ring].recvs.remove(&slot);
                break;
            }
        }
        busy
    }

    fn deliver_send(&mut self, shard: usize, ring: usize, slot: u32) -> bool {
        let socket_id = self.socket_in(shard, ring, slot, "send in flight");
        let flight = &mut self.flights[shard][ring];
        let send = &flight.sends[&slot];
        // SAFETY: as at submission; the completion has not been posted yet.
        let now = unsafe { std::slice::from_raw_parts(send.buf, send.len as usize) };
        assert!(
            now == send.bytes.as_slice(),
            "shard {shard} ring {ring}: slot {slot}'s send buffer changed while in flight"
        );
        let socket = &mut self.sockets[socket_id];
        let result = if socket.reset {
            -libc::ECONNRESET
        } else if socket.shut_down {
            -libc::EPIPE
        } else if socket.reading {
            let cut = match socket.send_cut {
                0 => send.bytes.len(),
                cut => cut.min(send.bytes.len()),
            };
            socket.received.extend_from_slice(&send.bytes[..cut]);
            cut as i32
        } else {
            return false;
        };
        let user_data = send.user_data;
        flight.sends.remove(&slot);
        self.kernel(shard, ring).post(user_data, result, 0);
        true
    }

    /// What the shards hold now.
    pub fn gauges(&mut self) -> Gauges {
        let mut gauges = Gauges::default();
        for shard in &mut self.shards {
            for slot in shard.conn_ids() {
                let Some((_, conn)) = shard.conns.at(slot) else {
                    continue;
                };
                gauges.connections += 1;
                gauges.inbox_bytes_max = gauges.inbox_bytes_max.max(conn.inbox_len());
                gauges.pending_bytes_max = gauges.pending_bytes_max.max(conn.pending_bytes());
            }
            for session in shard.sessions.slots.iter().flatten() {
                gauges.sessions += 1;
                gauges.session_queue_max = gauges.session_queue_max.max(session.queue_len());
                gauges.inflight_max = gauges.inflight_max.max(session.inflight_len());
            }
            gauges.mesh_overflow += shard.mesh.overflow_total();
            gauges.handoffs_pending += shard.handoffs_out.len() + shard.handoffs_in.pending();
        }
        gauges
    }

    /// Panics when a shard holds more than its limits allow.
    pub fn check_bounds(&mut self) {
        let limits = self.limits.clone();
        let gauges = self.gauges();
        // A partial packet is shorter than the packet it starts, which is checked against
        // packet_size_max from its fixed header.
        assert!(
            gauges.inbox_bytes_max < limits.packet_size_max as usize,
            "a connection buffers {} bytes of a partial packet (packet_size_max {})",
            gauges.inbox_bytes_max,
            limits.packet_size_max
        );
        assert!(
            gauges.session_queue_max <= limits.offline_queue_max as usize,
            "a session queues {} messages (offline_queue_max {})",
            gauges.session_queue_max,
            limits.offline_queue_max
        );
        assert!(
            gauges.inflight_max <= limits.inflight_max as usize,
            "a session has {} messages in flight (inflight_max {})",
            gauges.inflight_max,
            limits.inflight_max
        );
    }

    /// Every client closes (reading what is still sent), time passes beyond every timeout,
    /// and then nothing of any connection may be left: no slot, no operation in flight, no
    /// buffer out, no hand-off, no connected count; each shard has its accept and timer armed.
    pub fn finish(&mut self) {
        for socket in &mut self.sockets {
            socket.reading = true;
            socket.client_closed = true;
        }
        self.run();
        let wait_ms = (u64::from(self.limits.connect_timeout_secs) + 2) * 1000;
        self.advance(wait_ms);
        self.run();
        for (id, socket) in self.sockets.iter().enumerate() {
            assert!(
                socket.closed,
                "socket {id} still open after every client closed"
            );
        }
        for shard in 0..self.shards.len() {
            let mut accepts = 0;
            for ring in 0..self.rings_per_shard {
                let flight = &self.flights[shard][ring];
                let here = format!("shard {shard} ring {ring}");
                assert!(flight.recvs.is_empty(), "{here}: recvs still armed");
                assert!(flight.sends.is_empty(), "{here}: sends still in flight");
                accepts += usize::from(flight.accept.is_some());
                let count = self.shards[shard].rings[ring]
                    .sim()
                    .map(|(kernel, bufs)| (kernel.files_in_use(), kernel.buffers_provided(bufs)));
                let (files_in_use, provided) = count.expect("a simulated ring");
                assert_eq!(files_in_use, 0, "{here}: slots still hold sockets");
                assert_eq!(
                    provided, self.shards[shard].config.recv_buffer_count,
                    "{here}: provided buffers not all recycled"
                );
            }
            let s = &self.shards[shard];
            assert_eq!(
                accepts, 1,
                "shard {shard}: {accepts} accepts armed, not one"
            );
            assert!(
                s.conns.is_empty(),
                "shard {shard}: {} connections left",
                s.conns.len()
            );
            assert!(
                s.handoffs_out.is_empty(),
                "shard {shard}: hand-offs out left"
            );
            assert_eq!(
                s.handoffs_in.pending(),
                0,
                "shard {shard}: hand-offs in left"
            );
            assert_eq!(s.stats.connections, 0, "shard {shard}: connected count");
            assert_eq!(
                self.flights[shard][0].timers.len(),
                1,
                "shard {shard}: the timer is not armed"
            );
            for session in s.sessions.slots.iter().flatten() {
                assert!(
                    !session.clean_session && session.conn.is_none(),
                    "shard {shard}: session {:?} outlived its connection",
                    session.client_id
                );
            }
        }
        self.check_interest();
    }

    /// Each shard announces the distinct filters its sessions hold (`$share` groups too), and
    /// every other shard's interest index holds exactly the plain ones: nothing leaked,
    /// nothing lost.
    fn check_interest(&self) {
        if self.shards.len() == 1 {
            return;
        }
        let held: Vec<HashSet<&str>> = self
            .shards
            .iter()
            .map(|shard| {
                let sessions = shard.sessions.slots.iter().flatten();
                sessions
                    .flat_map(|session| session.subscriptions.iter().map(|(f, _)| &**f))
                    .collect()
            })
            .collect();
        for (index, shard) in self.shards.iter().enumerate() {
            assert_eq!(
                shard.local_interest.filter_count(),
                held[index].len(),
                "shard {index}: announced filters {:?}",
                held[index]
            );
            let others: HashSet<&str> = (0..self.shards.len())
                .filter(|&other| other != index)
                .flat_map(|other| held[other].iter().copied())
                .filter(|filter| parse_shared(filter).is_none())
                .collect();
            assert_eq!(
                shard.interest.filter_count(),
                others.len(),
                "shard {index}: interest index against the other shards' filters {others:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::home_shard;
    use crate::protocol::{
        decode, encode, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe,
        SubscriptionOptions,
    };
    use bytes::{Bytes, BytesMut};

    fn config(shards: usize) -> Config {
        Config {
            shards,
            ring_files_max: 8,
            recv_buffer_count: 4,
            recv_buffer_size: 64,
            ..Config::default()
        }
    }

    fn bytes(packet: Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(&packet, ProtocolVersion::V3_1_1, &mut out).expect("encodes");
        out.to_vec()
    }

    fn connect(client_id: &str) -> Vec<u8> {
        bytes(Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_start: true,
            keepalive_secs: 60,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })))
    }

    fn packets(received: &[u8]) -> Vec<Packet> {
        let mut buf = BytesMut::from(received);
        let mut out = Vec::new();
        while let Some(packet) = decode(&mut buf, ProtocolVersion::V3_1_1, u32::MAX).expect("valid")
        {
            out.push(packet);
        }
        assert!(buf.is_empty(), "a partial packet left");
        out
    }

    /// A client id homed on `shard` of `shards`.
    fn homed_on(shard: usize, shards: usize, prefix: &str) -> String {
        (0..)
            .map(|n| format!("{prefix}{n}"))
            .find(|id| home_shard(id.as_bytes(), shards) == shard)
            .expect("some id hashes there")
    }

    #[test]
    fn a_publish_crosses_shards_and_clients_are_handed_home() {
        let mut sim = SimBroker::new(config(2)).expect("sim");
        // Both connect to shard 0; the subscriber lives on shard 1 (a hand-off).
        let (sub_id, pub_id) = (homed_on(1, 2, "sub"), homed_on(0, 2, "pub"));
        let subscriber = sim.connect(0);
        let mut stream = connect(&sub_id);
        stream.extend(bytes(Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("a/+".into(), SubscriptionOptions::default())],
            properties: Properties::default(),
        })));
        // Cut in the middle of the SUBSCRIBE, and written in bits smaller than a buffer.
        let cut = stream.len() - 3;
        sim.write(subscriber, &stream[..cut]);
        sim.write(subscriber, &stream[cut..]);
        sim.run();
        let publisher = sim.connect(0);
        sim.write(publisher, &connect(&pub_id));
        sim.write(
            publisher,
            &bytes(Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "a/b".into(),
                packet_id: 0,
                payload: Bytes::from_static(b"hello"),
                properties: Properties::default(),
            })),
        );
        sim.run();
        let got = packets(sim.received(subscriber));
        assert!(matches!(got[0], Packet::ConnAck(_)), "{got:?}");
        assert!(matches!(got[1], Packet::SubAck(_)), "{got:?}");
        match &got[2] {
            Packet::Publish(publish) => assert_eq!(&publish.payload[..], b"hello"),
            other => panic!("{other:?}"),
        }
        let stats = sim.stats();
        assert_eq!((stats[0].handoffs_out, stats[1].handoffs_in), (1, 1));
        sim.check_bounds();
        sim.finish();
    }

    #[test]
    fn a_client_that_does_not_read_holds_its_sends_until_it_goes() {
        let mut sim = SimBroker::new(config(1)).expect("sim");
        let client = sim.connect(0);
        sim.set_reading(client, false);
        sim.write(client, &connect("slow"));
        sim.write(client, &[0xC0, 0x00]);
        sim.run();
        assert!(
            sim.received(client).is_empty(),
            "nothing completes while it does not read"
        );
        sim.set_reading(client, true);
        sim.set_send_cut(client, 1);
        sim.run();
        assert_eq!(packets(sim.received(client)).len(), 2, "CONNACK, PINGRESP");
        sim.finish();
    }

    /// Issue 7 (found by the fuzzer): a refused client whose CONNACK could not be sent (it
    /// reset before reading) kept its slot forever: the close waited for a flush that had
    /// failed, so the shutdown was never sent and the connection never released.
    #[test]
    fn issue_7_a_refused_client_that_resets_before_its_connack_is_released() {
        let mut sim = SimBroker::new(config(1)).expect("sim");
        let client = sim.connect(0);
        sim.set_reading(client, false);
        let mut refused = connect("");
        refused[9] = 0; // connect flags: clean session 0 with an empty id [MQTT-3.1.3-8]
        sim.write(client, &refused);
        sim.run();
        sim.reset(client);
        sim.run();
        assert!(sim.is_closed(client), "the slot is released");
        sim.finish();
    }

    /// Issue 7 (found by the fuzzer): a shard whose table filled up paused accepting until a
    /// slot was released, but slots freed by handing connections to their home shard did not
    /// count, so once its clients had all moved home it never accepted again.
    #[test]
    fn issue_7_slots_freed_by_hand_offs_resume_a_paused_accept() {
        let mut sim = SimBroker::new(Config {
            ring_files_max: 2,
            ..config(2)
        })
        .expect("sim");
        let movers: Vec<SocketId> = (0..3).map(|_| sim.connect(1)).collect();
        sim.run();
        assert!(sim.is_closed(movers[2]), "the third found the table full");
        for (n, &socket) in movers[..2].iter().enumerate() {
            sim.write(socket, &connect(&homed_on(0, 2, &format!("mover{n}-"))));
        }
        sim.run();
        assert_eq!(sim.stats()[1].handoffs_out, 2, "both went home to shard 0");
        let newcomer = sim.connect(1);
        sim.write(newcomer, &connect(&homed_on(1, 2, "stay")));
        sim.run();
        let got = packets(sim.received(newcomer));
        assert!(matches!(got.first(), Some(Packet::ConnAck(_))), "{got:?}");
        sim.finish();
    }

    #[test]
    fn the_connect_timeout_closes_a_silent_connection() {
        let mut sim = SimBroker::new(config(1)).expect("sim");
        let client = sim.connect(0);
        sim.run();
        sim.advance(5_000);
        sim.run();
        assert!(!sim.is_closed(client));
        sim.advance(6_000);
        sim.run();
        assert!(sim.is_closed(client), "closed after connect_timeout_secs");
        sim.finish();
    }
}
