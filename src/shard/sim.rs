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
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::mesh::Mesh;
use crate::ring::{Ring, RingSizes};
use crate::topic::filter::parse_shared;

use super::peers::Peers;
use super::{Shard, ShardParams, ShardStats, StatsBoard, Waker};

mod kernel;

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
    /// The largest `recv_burst_max` so far (the outbox bound's slack depends on it).
    recv_burst_seen_max: usize,
    turns: u64,
    /// Print every operation and completion to stderr (`set_trace`), to read a failing input.
    trace: bool,
    /// Kernel misbehaviours a test may ask for (`set_faults`).
    faults: Faults,
    /// MSG_RING descriptor sends held back while `faults.hold_handoffs` (shard, ring, op).
    held_handoffs: Vec<(usize, usize, crate::ring::sim::SimOp)>,
}

/// What the simulated kernel may do that it normally does not, for the lifecycle tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// A cancel finds the recv it targets busy (-EALREADY): the recv stays armed until
    /// something else (a shutdown, the peer) ends it.
    pub stuck_cancels: bool,
    /// MSG_RING descriptor sends wait until `release_handoffs` (a target slow to run its
    /// task work).
    pub hold_handoffs: bool,
    /// A MSG_RING descriptor send installs the socket in the target's table but cannot post
    /// the target's completion: the source reads -EOVERFLOW (the kernel's own case: "the
    /// target still received the file descriptor but wasn't notified").
    pub handoff_overflow: bool,
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
        let meshes = Mesh::new(
            shard_count,
            config.limits.mesh_ring_capacity_for(shard_count),
        );
        let mut shards = Vec::with_capacity(shard_count);
        let board = Arc::new(StatsBoard::new(shard_count));
        for (index, (mesh, waker)) in meshes.into_iter().zip(wakers).enumerate() {
            let rings = (0..rings_per_shard)
                .map(|ring| Ring::simulated(sizes, ring_fd(index, ring, rings_per_shard)))
                .collect::<io::Result<Vec<Ring>>>()?;
            let params = ShardParams {
                index,
                config: config.clone(),
                sockets: vec![listener()?],
                listeners: Arc::new(vec![crate::listener::Listener::new(
                    &crate::config::ListenerConfig::mqtt("127.0.0.1:0".parse().expect("address")),
                )
                .map_err(io::Error::other)?]),
                waker,
                security: Default::default(),
                files,
                board: board.clone(),
                mesh,
                peers: peers.clone(),
                persistence: None,
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
            recv_burst_seen_max: 4,
            turns: 0,
            trace: false,
            faults: Faults::default(),
            held_handoffs: Vec::new(),
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
        self.recv_burst_seen_max = self.recv_burst_seen_max.max(self.recv_burst_max);
    }

    /// Prints every operation, completion and client action to stderr.
    pub fn set_trace(&mut self, trace: bool) {
        self.trace = trace;
    }

    /// Sets the kernel misbehaviours to simulate from now on.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Runs the descriptor sends held by `Faults::hold_handoffs` (not `run`: the caller's).
    pub fn release_handoffs(&mut self) {
        let hold = std::mem::replace(&mut self.faults.hold_handoffs, false);
        for (shard, ring, op) in std::mem::take(&mut self.held_handoffs) {
            self.submitted(shard, ring, op);
        }
        self.faults.hold_handoffs = hold;
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

    /// Panics when a shard holds more than its limits allow, or counts slots the kernel does
    /// not hold (`check_slots`). Call it after `run`.
    pub fn check_bounds(&mut self) {
        self.check_slots();
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
        let slack = self.outbox_slack();
        assert!(
            gauges.pending_bytes_max <= limits.outbox_bytes_max as usize + slack,
            "a connection has {} bytes waiting to go out (outbox_bytes_max {} + slack {slack})",
            gauges.pending_bytes_max,
            limits.outbox_bytes_max
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

    /// Each ring's count of the slots the kernel holds (`accept.rs`, which decides when to
    /// accept) is the kernel's own: no slot the shard does not know of. Holds whenever `run`
    /// has returned: every completion that fills or frees a slot has been reaped.
    pub fn check_slots(&mut self) {
        for shard in 0..self.shards.len() {
            for ring in 0..self.rings_per_shard {
                let counted = self.shards[shard].accept.used(ring);
                let (kernel, _) = self.kernel_and_buffers(shard, ring);
                assert_eq!(
                    counted as usize,
                    kernel.files_in_use(),
                    "shard {shard} ring {ring}: slots counted against slots the kernel holds"
                );
            }
        }
    }

    /// How far past `outbox_bytes_max` a connection's waiting bytes may get (`backpressure.rs`:
    /// the cap is checked where bytes move, so it is passed by what moves at once):
    /// - what the shard reads before its pause lands, each byte answered by at most one
    ///   (PINGREQ → PINGRESP, PUBREL → PUBCOMP; every other answer is shorter than its
    ///   request): one multishot burst per turn (here `recv_burst_max` buffers; on the
    ///   kernel, what it hands one recv between two turns), twice for the turn that adopts a
    ///   handed-off connection with the bytes read meanwhile, plus a partial packet that
    ///   completes, or the packets that waited behind a held SUBACK, with it (≤
    ///   `packet_size_max` each, `subscribe.rs`);
    /// - one message past the cap: a delivery is refused only once the cap is reached
    ///   (`Conn::outbox_full`), retained messages for a SUBSCRIBE included (`subscribe.rs`);
    /// - the in-flight window resent at a session's resume, unchecked ([MQTT-4.4.0-1]);
    /// - acks held behind the mesh and released at once (`held.rs`): at most
    ///   `incoming_inflight_max` of them, 5 bytes each at most, and the held SUBACK (one byte
    ///   per filter of a SUBSCRIBE of at most `packet_size_max`).
    fn outbox_slack(&self) -> usize {
        let limits = &self.limits;
        let packet = limits.packet_size_max as usize;
        // A forwarded PUBLISH re-encoded for another protocol version or QoS grows by a few
        // bytes: property length, packet id, a longer length field.
        let message = packet + 16;
        let buffer = self.shards[0].config.recv_buffer_size as usize;
        let read = 2 * self.recv_burst_seen_max * buffer + 2 * packet;
        let resent = usize::from(limits.inflight_max) * message;
        let held = usize::from(limits.incoming_inflight_max) * 5 + packet / 4 + 8;
        read + message + resent + held
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
        let lost: u64 = self.shards.iter().map(|s| s.stats.handoff_slots_lost).sum();
        for (id, socket) in self.sockets.iter().enumerate() {
            // A socket in a lost slot (`Faults::handoff_overflow`) was shut down: its client
            // saw the end; the slot goes with the shard.
            assert!(
                socket.closed || lost > 0 && socket.shut_down,
                "socket {id} still open after every client closed"
            );
        }
        self.check_slots();
        for shard in 0..self.shards.len() {
            let mut accepts = 0;
            for ring in 0..self.rings_per_shard {
                let flight = &self.flights[shard][ring];
                let here = format!("shard {shard} ring {ring}");
                assert!(flight.recvs.is_empty(), "{here}: recvs still armed");
                assert!(flight.sends.is_empty(), "{here}: sends still in flight");
                accepts += usize::from(flight.accept.is_some());
                let count = self.shards[shard].rings[ring].sim().map(|(kernel, bufs)| {
                    let circulating = bufs.provided();
                    (
                        kernel.files_in_use(),
                        kernel.buffers_provided(bufs),
                        circulating,
                    )
                });
                let (files_in_use, provided, circulating) = count.expect("a simulated ring");
                let lost = self.shards[shard].accept.used(ring) as usize;
                assert_eq!(files_in_use, lost, "{here}: slots still hold sockets");
                assert_eq!(
                    provided, circulating,
                    "{here}: provided buffers not all recycled"
                );
                assert!(
                    circulating <= self.shards[shard].config.recv_buffer_count,
                    "{here}: more buffers than the pool holds"
                );
            }
            let s = &self.shards[shard];
            let used: u32 = (0..self.rings_per_shard).map(|r| s.accept.used(r)).sum();
            assert_eq!(
                u64::from(used),
                s.stats.handoff_slots_lost,
                "shard {shard}: slots held besides the lost ones"
            );
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
                    .flat_map(|session| session.subscription_filters())
                    .collect()
            })
            .collect();
        for (index, shard) in self.shards.iter().enumerate() {
            assert_eq!(
                shard.local_interest.filter_count() + shard.subscriptions.hashed_filter_count(),
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
mod tests;
