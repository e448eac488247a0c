//! One load thread: an io_uring event loop over a batch of connections. Connections are direct
//! descriptors in the ring's fixed-file table (slot = connection number), created, optionally
//! bound to a source address, and connected by one linked chain of ring operations, so they
//! never enter the process fd table. A table holds at most the open-file limit, so a thread
//! with more connections drives several rings: it sleeps on the first, which polls an eventfd
//! the others signal on every completion. Reads are multishot recvs into the provided-buffer ring of `ringmq::ring`
//! (an idle connection owns no read buffer), writes one send per connection per loop turn.
//!
//! A turn: open the connections due by the ramp, let publishers put due messages into their
//! outboxes, flush outboxes, wait for completions (bounded by the next due send), handle them.
//! Nothing is allocated per message: payloads are written into one scratch buffer, packets
//! encoded straight into reused outboxes, and decoded packets borrow the connection's inbox.
//! With `--tls-ca` the outbox stays plaintext and is sealed into records in the send buffer at
//! the flush; received records are opened into the inbox (see `tls`; rustls's own record
//! buffers do allocate, so a TLS run costs the generator more per message than a plain one).
//!
//! The `handshake` scenario (`Mode::Churn`): while measuring, a connection that is through
//! sends DISCONNECT, closes once that is sent, and when its close (and every operation on the
//! old socket) has completed, connects again in the same fixed-file slot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use bytestring::ByteString;
use hdrhistogram::Histogram;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use ringmq::protocol::{
    decode, encode, encode_publish, publish_at, Connect, Disconnect, Packet, Props, PubAck, QoS,
    Subscribe, SubscriptionOptions,
};
use ringmq::ring::BufRing;

use rustls::ClientConnection;

use crate::plan::{ConnPlan, Mode, Role, Settings};
use crate::schedule::{share, Schedule};
use crate::stamp::{monotonic_ns, Stamp};
use crate::stats::new_histogram;
use crate::tls;
use crate::tracker::SeqTracker;

/// State the main thread and the load threads share. Times are CLOCK_MONOTONIC ns; 0 = unset.
pub struct Shared {
    /// When publishing starts; set once by the main thread when every thread is connected
    /// (or the connect deadline passed). `measure_start_ns` and `end_ns` are set before it.
    pub start_ns: AtomicU64,
    pub measure_start_ns: AtomicU64,
    pub end_ns: AtomicU64,
    pub stop: AtomicBool,
    /// Per publisher: highest sequence received by any of its subscribers, plus one. The
    /// closed-loop QoS 0 window (messages sent but not yet seen back) reads it.
    pub delivered: Vec<AtomicU64>,
    pub threads: Vec<ThreadShared>,
}

/// One thread's running figures, published every 100 ms for the progress line.
pub struct ThreadShared {
    pub ready: AtomicBool,
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Latencies since the progress line last took them.
    pub interval: Mutex<Histogram<u64>>,
}

impl Shared {
    pub fn new(threads: usize, publishers: u32) -> Shared {
        Shared {
            start_ns: AtomicU64::new(0),
            measure_start_ns: AtomicU64::new(0),
            end_ns: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            delivered: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            threads: (0..threads)
                .map(|_| ThreadShared {
                    ready: AtomicBool::new(false),
                    connected: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    sent: AtomicU64::new(0),
                    received: AtomicU64::new(0),
                    interval: Mutex::new(new_histogram()),
                })
                .collect(),
        }
    }
}

/// What a thread hands back when it ends.
pub struct ThreadResult {
    /// Publish-to-delivery latency of messages stamped inside the measured window (ns).
    pub latency: Histogram<u64>,
    /// Open loop: how late each message of the window left after its intended time (ns). Large
    /// values mean the generator itself, not only the broker, is in the latencies.
    pub send_lag: Histogram<u64>,
    /// Socket to CONNACK (and SUBACK when subscribing), ns.
    pub connect_latency: Histogram<u64>,
    /// (publisher index, messages it sent).
    pub sent: Vec<(u32, u64)>,
    pub sent_in_window: u64,
    /// Per publisher, what this thread's subscribers saw of it (trackers merged).
    pub trackers: Vec<(u32, SeqTracker)>,
    /// Per subscriber that got its SUBACK: the publishers it expects (first, count).
    pub receivers: Vec<(u32, u32)>,
    pub received: u64,
    pub received_in_window: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub refused: u64,
    pub subscribe_refused: u64,
    pub dropped: u64,
    pub acked: u64,
    pub unexpected: u64,
    pub window_stalls: u64,
    /// Rate mode: times a publisher had due messages the socket or QoS window held back.
    pub send_stalls: u64,
    pub recv_buffers_exhausted: u64,
    /// Error text -> occurrences (connect errors, refusals, drops).
    pub errors: BTreeMap<String, u64>,
    pub first_connect_ns: u64,
    pub last_ready_ns: u64,
    /// `handshake`: connections through inside the measured window.
    pub handshakes_in_window: u64,
    /// What the first TLS handshake agreed on (`tls::describe`).
    pub tls_session: Option<String>,
}

const OP_SOCKET: u64 = 1;
const OP_NODELAY: u64 = 2;
const OP_NO_PORT: u64 = 3;
const OP_BIND: u64 = 4;
const OP_CONNECT: u64 = 5;
const OP_RECV: u64 = 6;
const OP_SEND: u64 = 7;
const OP_SHUTDOWN: u64 = 8;
const OP_CLOSE: u64 = 9;
const OP_WAKE: u64 = 10;

fn token(op: u64, conn: usize) -> u64 {
    (op << 32) | conn as u64
}

/// setsockopt value for the boolean options (TCP_NODELAY, IP_BIND_ADDRESS_NO_PORT); static, so
/// the pointer outlives every operation that reads it.
static ONE: libc::c_int = 1;

/// Bytes a publisher's outbox may hold before it waits for the socket; the messages stay due
/// (and keep their intended times) rather than being dropped.
const OUTBOX_BYTES_MAX: usize = 1 << 20;
/// Unacknowledged QoS 1/2 publishes per connection when the broker sets no Receive Maximum:
/// below the 65535 packet identifiers so an identifier is never reused while in flight.
const INFLIGHT_CAP: u32 = 65_000;
const PACKET_SIZE_MAX: u32 = 64 << 20;
/// Provided receive buffers per ring: 16 MiB, touched only as traffic needs them.
const RECV_BUFFER_COUNT: u16 = 2048;
const RECV_BUFFER_SIZE: u32 = 8 * 1024;
const SWEEP_INTERVAL_NS: u64 = 100_000_000;
/// A closed-loop QoS 0 publisher whose window has not moved for this long treats what it has
/// outstanding as lost (the broker dropped it) and goes on, so a run never hangs.
const WINDOW_STALL_NS: u64 = 1_000_000_000;
/// Longest single wait for completions: stop, progress and timeouts are checked this often.
const WAIT_MAX_NS: u64 = 50_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Connecting,
    ConnAckWait,
    SubAckWait,
    Ready,
    Closed,
}

impl State {
    fn in_handshake(self) -> bool {
        matches!(
            self,
            State::Connecting | State::ConnAckWait | State::SubAckWait
        )
    }
}

const NONE: u32 = u32::MAX;

struct Conn {
    state: State,
    client_id: String,
    filter: Option<String>,
    /// Local index into `pubs` / `subs`, or NONE.
    publisher: u32,
    subscriber: u32,
    source: Option<usize>,
    inbox: BytesMut,
    outbox: BytesMut,
    /// The bytes of the send in flight; the kernel reads them until its completion.
    sending: BytesMut,
    send_offset: usize,
    send_pending: bool,
    recv_armed: bool,
    dirty: bool,
    /// A step of the connect chain failed (and was counted).
    chain_failed: bool,
    /// The TLS session (`--tls-ca` only), made when the socket connects.
    tls: Option<Box<ClientConnection>>,
    /// `handshake`: DISCONNECT is queued; the connection closes once it is sent, then
    /// connects again.
    leaving: bool,
    /// Its close is submitted and has not completed: the slot is not free yet.
    closing: bool,
    started_ns: u64,
    last_sent_ns: u64,
    packet_id_next: u16,
    inflight: u32,
    inflight_max: u32,
}

struct Pub {
    conn: u32,
    index: u32,
    topic: String,
    sent: u64,
    acked: u64,
    /// QoS 0 closed loop: sequences below this are written off (see WINDOW_STALL_NS).
    window_floor: u64,
    last_delivered: u64,
    last_progress_ns: u64,
    /// In the rate-mode backlog.
    backlogged: bool,
}

struct Sub {
    first_publisher: u32,
    trackers: Vec<SeqTracker>,
    subscribed: bool,
}

/// One io_uring and its provided receive buffers. A thread owns several when its connections
/// outnumber one fixed-file table (the kernel caps each table at the open-file limit).
struct RingSlot {
    // Field order matters: the ring goes first on drop, before the buffers it reads into.
    ring: IoUring,
    bufs: BufRing,
}

pub struct Worker {
    // Field order matters: the rings go first on drop, before the connection buffers the
    // kernel may still point into.
    rings: Vec<RingSlot>,
    /// Connection c lives in ring c / files_per_ring, slot c % files_per_ring.
    files_per_ring: usize,
    /// Signalled by the kernel when a completion lands on any ring but the first, which
    /// polls it: the thread sleeps on the first ring alone. -1 with a single ring.
    wake_fd: libc::c_int,
    wake_armed: bool,
    conns: Vec<Conn>,
    pubs: Vec<Pub>,
    subs: Vec<Sub>,
    dirty: Vec<u32>,
    broker_addr: Box<libc::sockaddr_in>,
    source_addrs: Vec<libc::sockaddr_in>,
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    me: usize,
    payload: Vec<u8>,
    next_to_open: usize,
    handshakes: u32,
    ramp: Schedule,
    schedule: Option<Schedule>,
    /// Rate mode: the next index of the thread's stream of intended send times.
    stream_cursor: u64,
    /// Rate mode: publishers with due messages they could not send yet.
    backlog: Vec<u32>,
    start_ns: u64,
    measure_start_ns: u64,
    end_ns: u64,
    stopping: bool,
    next_sweep_ns: u64,
    next_keepalive_ns: u64,
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
    interval: Histogram<u64>,
    connect_latency: Histogram<u64>,
    /// When the recv completion being decoded was reaped: the bytes of one completion arrived
    /// together, so their messages share one clock read (not one per message).
    arrived_ns: u64,
    sent_total: u64,
    sent_in_window: u64,
    received: u64,
    received_in_window: u64,
    connected: u64,
    connect_failed: u64,
    refused: u64,
    subscribe_refused: u64,
    dropped: u64,
    acked: u64,
    unexpected: u64,
    window_stalls: u64,
    send_stalls: u64,
    recv_buffers_exhausted: u64,
    errors: BTreeMap<String, u64>,
    first_connect_ns: u64,
    last_ready_ns: u64,
    /// `handshake`: reconnecting has begun (at the common start).
    churn_started: bool,
    handshakes_in_window: u64,
    tls_session: Option<String>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.wake_fd >= 0 {
            // SAFETY: our own eventfd, closed once.
            unsafe { libc::close(self.wake_fd) };
        }
    }
}

fn sockaddr(addr: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Messages per second for thread `me` of `threads` when `publishers` are dealt round-robin
/// and `total` is split in proportion: cumulative shares are rounded down, so the threads'
/// shares add up to `total` exactly.
pub fn rate_share(total: u64, publishers: u64, threads: u64, me: u64) -> u64 {
    if publishers == 0 {
        return 0;
    }
    let before: u64 = (0..me).map(|t| share(publishers, threads, t)).sum();
    let through = before + share(publishers, threads, me);
    let cumulative = |n: u64| (total as u128 * n as u128 / publishers as u128) as u64;
    cumulative(through) - cumulative(before)
}

fn errno_text(res: i32) -> String {
    std::io::Error::from_raw_os_error(-res).to_string()
}

fn build_ring(entries: u32, files: u32) -> std::io::Result<IoUring> {
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries)
        .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::ENOSYS) => std::io::Error::new(
                e.kind(),
                format!("io_uring is disabled: run sysctl -w kernel.io_uring_disabled=0 ({e})"),
            ),
            _ => std::io::Error::new(e.kind(), format!("io_uring setup failed: {e}")),
        })?;
    ring.submitter().register_files_sparse(files).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "registering {files} fixed-file slots failed ({e}): each thread's table is \
                 capped by the open-file limit; use more --threads"
            ),
        )
    })?;
    Ok(ring)
}

impl Worker {
    /// Builds the thread's ring and connection table; call on the thread that runs it.
    pub fn new(
        me: usize,
        plans: Vec<ConnPlan>,
        settings: Arc<Settings>,
        shared: Arc<Shared>,
    ) -> Result<Worker, String> {
        let total = plans.len().max(1);
        // Headroom for the process's own descriptors (the ring fds, the eventfd, stdio).
        let limit = ringmq::ring::nofile_limit()
            .saturating_sub(64)
            .clamp(1, ringmq::ring::FIXED_FILES_MAX) as usize;
        let files_per_ring = match settings.ring_files_max as usize {
            0 => limit,
            n => n.min(limit),
        }
        .min(total);
        let ring_count = total.div_ceil(files_per_ring);
        let mut rings = Vec::with_capacity(ring_count);
        for r in 0..ring_count {
            let files = files_per_ring.min(total - r * files_per_ring) as u32;
            let ring = build_ring(4096, files).map_err(|e| e.to_string())?;
            let bufs = BufRing::new(&ring.submitter(), 0, RECV_BUFFER_COUNT, RECV_BUFFER_SIZE)
                .map_err(|e| format!("registering the receive buffer ring failed: {e}"))?;
            rings.push(RingSlot { ring, bufs });
        }
        let mut wake_fd = -1;
        if ring_count > 1 {
            // SAFETY: plain eventfd creation; the fd is closed in Drop.
            wake_fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if wake_fd < 0 {
                return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
            }
            for slot in &rings[1..] {
                slot.ring
                    .submitter()
                    .register_eventfd(wake_fd)
                    .map_err(|e| format!("registering the wake-up eventfd failed: {e}"))?;
            }
        }
        let mut conns = Vec::with_capacity(plans.len());
        let mut pubs = Vec::new();
        let mut subs = Vec::new();
        let sources = settings.sources.len();
        for (i, plan) in plans.into_iter().enumerate() {
            let (publisher, subscriber, filter) = match plan.role {
                Role::Publisher { index, topic } => {
                    pubs.push(Pub {
                        conn: i as u32,
                        index,
                        topic,
                        sent: 0,
                        acked: 0,
                        window_floor: 0,
                        last_delivered: 0,
                        last_progress_ns: 0,
                        backlogged: false,
                    });
                    (pubs.len() as u32 - 1, NONE, None)
                }
                Role::Subscriber {
                    filter,
                    first_publisher,
                    publisher_count,
                } => {
                    subs.push(Sub {
                        first_publisher,
                        trackers: vec![SeqTracker::default(); publisher_count as usize],
                        subscribed: false,
                    });
                    (NONE, subs.len() as u32 - 1, Some(filter))
                }
                Role::Idle { filter } => (NONE, NONE, filter),
            };
            conns.push(Conn {
                state: State::Waiting,
                client_id: plan.client_id,
                filter,
                publisher,
                subscriber,
                source: (sources > 0).then(|| (i * 7919 + me) % sources),
                inbox: BytesMut::new(),
                outbox: BytesMut::new(),
                sending: BytesMut::new(),
                send_offset: 0,
                send_pending: false,
                recv_armed: false,
                dirty: false,
                chain_failed: false,
                tls: None,
                leaving: false,
                closing: false,
                started_ns: 0,
                last_sent_ns: 0,
                packet_id_next: 0,
                inflight: 0,
                inflight_max: INFLIGHT_CAP,
            });
        }
        let mut payload = vec![0u8; settings.payload_len];
        // Bytes past the stamp: a fixed, recognisable pattern.
        for (i, b) in payload.iter_mut().enumerate().skip(crate::stamp::STAMP_LEN) {
            *b = b'a' + (i % 26) as u8;
        }
        let now = monotonic_ns();
        let ramp_rate = settings.ramp_per_sec.max(1.0).round() as u64;
        Ok(Worker {
            rings,
            files_per_ring,
            wake_fd,
            wake_armed: false,
            conns,
            pubs,
            subs,
            dirty: Vec::new(),
            broker_addr: Box::new(sockaddr(settings.broker)),
            source_addrs: settings
                .sources
                .iter()
                .map(|ip| sockaddr(std::net::SocketAddrV4::new(*ip, 0)))
                .collect(),
            settings,
            shared,
            me,
            payload,
            next_to_open: 0,
            handshakes: 0,
            ramp: Schedule::new(now, ramp_rate, 1),
            schedule: None,
            stream_cursor: 0,
            backlog: Vec::new(),
            start_ns: 0,
            measure_start_ns: u64::MAX,
            end_ns: u64::MAX,
            stopping: false,
            next_sweep_ns: now,
            next_keepalive_ns: now + 1_000_000_000,
            latency: new_histogram(),
            send_lag: new_histogram(),
            interval: new_histogram(),
            connect_latency: new_histogram(),
            arrived_ns: 0,
            sent_total: 0,
            sent_in_window: 0,
            received: 0,
            received_in_window: 0,
            connected: 0,
            connect_failed: 0,
            refused: 0,
            subscribe_refused: 0,
            dropped: 0,
            acked: 0,
            unexpected: 0,
            window_stalls: 0,
            send_stalls: 0,
            recv_buffers_exhausted: 0,
            errors: BTreeMap::new(),
            first_connect_ns: 0,
            last_ready_ns: 0,
            churn_started: false,
            handshakes_in_window: 0,
            tls_session: None,
        })
    }

    /// Runs until the main thread sets `stop`, then says goodbye and tears the ring down.
    pub fn run(mut self) -> ThreadResult {
        loop {
            let now = monotonic_ns();
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            self.open_due(now);
            self.learn_start();
            let mut wake_ns = now + WAIT_MAX_NS;
            if let Some(next) = self.pump_publishers(now) {
                wake_ns = wake_ns.min(next);
            }
            if now >= self.next_sweep_ns {
                self.sweep(now);
                self.next_sweep_ns = now + SWEEP_INTERVAL_NS;
            }
            wake_ns = wake_ns.min(self.next_sweep_ns);
            if self.next_to_open < self.conns.len()
                && self.handshakes < self.settings.handshakes_max
            {
                wake_ns = wake_ns.min(self.ramp.intended_ns(self.next_to_open as u64));
            }
            self.flush(now);
            self.wait(wake_ns.saturating_sub(monotonic_ns()));
            self.reap();
        }
        self.teardown();
        self.publish_progress();
        self.result()
    }

    fn ring_of(&self, c: usize) -> usize {
        c / self.files_per_ring
    }

    /// Connection c's slot in its ring's fixed-file table.
    fn slot(&self, c: usize) -> u32 {
        (c % self.files_per_ring) as u32
    }

    /// Queues an operation on connection c's ring.
    fn push(&mut self, c: usize, entry: squeue::Entry) {
        let r = self.ring_of(c);
        loop {
            // SAFETY: every pointer an entry carries (sockaddrs, ONE, outboxes) lives in the
            // worker, which outlives the ring, and is not moved or freed until completion.
            if unsafe { self.rings[r].ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Full: hand what is queued to the kernel. Completions beyond the CQ size wait in
            // the kernel's overflow list (IORING_FEAT_NODROP), so this cannot deadlock.
            if let Err(e) = self.rings[r].ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    self.count_error(format!("io_uring submit: {e}"));
                    return;
                }
                self.reap();
            }
        }
    }

    /// Makes room for `n` entries on connection c's ring, so a linked chain is never split
    /// across two submits (the kernel would end the chain at the split).
    fn reserve_sq(&mut self, c: usize, n: usize) {
        let r = self.ring_of(c);
        let sq = self.rings[r].ring.submission();
        if sq.capacity() - sq.len() < n {
            drop(sq);
            let _ = self.rings[r].ring.submit();
        }
    }

    /// Submits every ring's queue, then sleeps on the first ring until a completion (on any
    /// ring: the others signal the eventfd it polls) or the timeout.
    fn wait(&mut self, timeout_ns: u64) {
        for slot in &mut self.rings[1..] {
            if !slot.ring.submission().is_empty() {
                let _ = slot.ring.submit();
            }
        }
        if self.wake_fd >= 0 && !self.wake_armed {
            self.wake_armed = true;
            let entry = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(token(OP_WAKE, 0));
            self.push(0, entry);
        }
        if timeout_ns < 2_000 {
            let _ = self.rings[0].ring.submit();
            return;
        }
        let ts = types::Timespec::new()
            .sec(timeout_ns / 1_000_000_000)
            .nsec((timeout_ns % 1_000_000_000) as u32);
        let args = types::SubmitArgs::new().timespec(&ts);
        if let Err(e) = self.rings[0].ring.submitter().submit_with_args(1, &args) {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                _ => self.count_error(format!("io_uring wait: {e}")),
            }
        }
    }

    fn reap(&mut self) {
        let mut batch = [(0u64, 0i32, 0u32); 256];
        for r in 0..self.rings.len() {
            loop {
                let mut n = 0;
                for cqe in self.rings[r].ring.completion().take(batch.len()) {
                    batch[n] = (cqe.user_data(), cqe.result(), cqe.flags());
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                for &(user_data, result, flags) in &batch[..n] {
                    self.complete(user_data, result, flags);
                }
            }
        }
    }

    fn on_wake(&mut self, flags: u32) {
        let mut counter = 0u64;
        // SAFETY: reads 8 bytes into a local; the eventfd is non-blocking.
        unsafe { libc::read(self.wake_fd, (&mut counter as *mut u64).cast(), 8) };
        if !cqueue::more(flags) {
            self.wake_armed = false;
        }
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        if user_data >> 32 == OP_WAKE {
            self.on_wake(flags);
            return;
        }
        let c = (user_data & 0xffff_ffff) as usize;
        if c >= self.conns.len() {
            return;
        }
        match user_data >> 32 {
            OP_SOCKET | OP_NODELAY | OP_NO_PORT | OP_BIND
                if res < 0 && res != -libc::ECANCELED && !self.conns[c].chain_failed =>
            {
                // The first failing step of the connect chain says why; the rest of the chain
                // completes with ECANCELED.
                self.conns[c].chain_failed = true;
                let step = match user_data >> 32 {
                    OP_SOCKET => "socket",
                    OP_NODELAY => "setsockopt TCP_NODELAY",
                    OP_NO_PORT => "setsockopt IP_BIND_ADDRESS_NO_PORT",
                    _ => "bind",
                };
                self.count_error(format!("{step}: {}", errno_text(res)));
            }
            OP_CONNECT => self.on_connect(c, res),
            OP_RECV => self.on_recv(c, res, flags),
            OP_SEND => self.on_send(c, res),
            OP_CLOSE => {
                self.conns[c].closing = false;
                self.maybe_reconnect(c);
            }
            _ => {} // shutdown of a connection already counted as closed
        }
    }

    fn count_error(&mut self, text: String) {
        *self.errors.entry(text).or_insert(0) += 1;
    }

    fn set_state(&mut self, c: usize, state: State) {
        let old = self.conns[c].state;
        if old.in_handshake() && !state.in_handshake() {
            self.handshakes -= 1;
        } else if !old.in_handshake() && state.in_handshake() {
            self.handshakes += 1;
        }
        self.conns[c].state = state;
    }

    fn mark_dirty(&mut self, c: usize) {
        if !self.conns[c].dirty {
            self.conns[c].dirty = true;
            self.dirty.push(c as u32);
        }
    }

    /// Starts the connections the ramp has made due, keeping handshakes under the cap.
    fn open_due(&mut self, now: u64) {
        let due = self.ramp.due_count(now) as usize;
        while self.next_to_open < self.conns.len().min(due)
            && self.handshakes < self.settings.handshakes_max
            && !self.stopping
        {
            let c = self.next_to_open;
            self.next_to_open += 1;
            self.start_connect(c, now);
        }
    }

    fn start_connect(&mut self, c: usize, now: u64) {
        if self.first_connect_ns == 0 {
            self.first_connect_ns = now;
        }
        self.conns[c].started_ns = now;
        self.set_state(c, State::Connecting);
        let slot = self.slot(c);
        let Ok(target) = types::DestinationSlot::try_from_slot_target(slot) else {
            self.connect_failed(c, "no fixed-file slot".into());
            return;
        };
        self.reserve_sq(c, 5);
        let link = squeue::Flags::IO_LINK;
        self.push(
            c,
            opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0)
                .file_index(Some(target))
                .build()
                .flags(link)
                .user_data(token(OP_SOCKET, c)),
        );
        let one = &ONE as *const libc::c_int as *const libc::c_void;
        let one_len = std::mem::size_of::<libc::c_int>() as u32;
        self.push(
            c,
            opcode::SetSockOpt::new(
                types::Fixed(slot),
                libc::IPPROTO_TCP as u32,
                libc::TCP_NODELAY as u32,
                one,
                one_len,
            )
            .build()
            .flags(link)
            .user_data(token(OP_NODELAY, c)),
        );
        if let Some(source) = self.conns[c].source {
            // Bind the source address but let connect pick the port: ports are then unique
            // per (source, destination), not per source, so 40 sources hold 40 x 28k.
            self.push(
                c,
                opcode::SetSockOpt::new(
                    types::Fixed(slot),
                    libc::IPPROTO_IP as u32,
                    libc::IP_BIND_ADDRESS_NO_PORT as u32,
                    one,
                    one_len,
                )
                .build()
                .flags(link)
                .user_data(token(OP_NO_PORT, c)),
            );
            let addr =
                &self.source_addrs[source] as *const libc::sockaddr_in as *const libc::sockaddr;
            self.push(
                c,
                opcode::Bind::new(
                    types::Fixed(slot),
                    addr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
                .build()
                .flags(link)
                .user_data(token(OP_BIND, c)),
            );
        }
        let addr = &*self.broker_addr as *const libc::sockaddr_in as *const libc::sockaddr;
        self.push(
            c,
            opcode::Connect::new(
                types::Fixed(slot),
                addr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
            .build()
            .user_data(token(OP_CONNECT, c)),
        );
    }

    fn connect_failed(&mut self, c: usize, text: String) {
        if !self.conns[c].chain_failed {
            self.count_error(text);
        }
        self.connect_failed += 1;
        self.close(c);
    }

    fn on_connect(&mut self, c: usize, res: i32) {
        if self.conns[c].state != State::Connecting {
            return;
        }
        if res < 0 {
            let text = format!("connect: {}", errno_text(res));
            self.connect_failed(c, text);
            return;
        }
        if self.conns[c].chain_failed {
            self.connect_failed(c, String::new());
            return;
        }
        let settings = Arc::clone(&self.settings);
        let conn = &mut self.conns[c];
        let mut properties = Props::NONE;
        if settings.version.is_v5() {
            // Receive Maximum 65535: a broker's default window must not throttle the run.
            properties.receive_maximum = Some(u16::MAX);
        }
        let connect = Packet::Connect(Box::new(Connect {
            protocol: settings.version,
            clean_start: settings.clean_start,
            keepalive_secs: settings.keepalive_secs,
            client_id: conn.client_id.as_str().into(),
            will: None,
            username: None,
            password: None,
            properties,
        }));
        if let Err(e) = encode(&connect, settings.version, &mut conn.outbox) {
            let text = format!("encoding CONNECT: {e:?}");
            self.connect_failed(c, text);
            return;
        }
        if let Some(client) = &settings.tls {
            match client.connect() {
                Ok(tls) => conn.tls = Some(tls),
                Err(text) => {
                    self.connect_failed(c, text);
                    return;
                }
            }
        }
        self.set_state(c, State::ConnAckWait);
        self.arm_recv(c);
        self.mark_dirty(c);
    }

    fn arm_recv(&mut self, c: usize) {
        self.conns[c].recv_armed = true;
        let r = self.ring_of(c);
        let entry = opcode::RecvMulti::new(types::Fixed(self.slot(c)), self.rings[r].bufs.group())
            .build()
            .user_data(token(OP_RECV, c));
        self.push(c, entry);
    }

    fn on_recv(&mut self, c: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.conns[c].recv_armed = false;
        }
        if self.conns[c].state == State::Closed {
            if let Some(bid) = cqueue::buffer_select(flags) {
                let r = self.ring_of(c);
                self.rings[r].bufs.recycle(bid);
            }
            self.maybe_reconnect(c);
            return;
        }
        if res > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else {
                self.lost(c, "recv completed without a buffer".into());
                return;
            };
            let r = self.ring_of(c);
            let bytes = self.rings[r].bufs.get(bid, res as usize);
            let conn = &mut self.conns[c];
            let opened = match conn.tls.as_deref_mut() {
                None => {
                    conn.inbox.extend_from_slice(bytes);
                    Ok(false)
                }
                Some(tls) => tls::open(tls, bytes, &mut conn.inbox).map(|()| tls.wants_write()),
            };
            self.rings[r].bufs.recycle(bid);
            self.arrived_ns = monotonic_ns();
            match opened {
                Ok(false) => {}
                // Handshake records (or an alert) to answer.
                Ok(true) => self.mark_dirty(c),
                Err(text) => {
                    self.lost(c, text);
                    return;
                }
            }
            self.decode_inbox(c);
        } else if res == 0 {
            self.lost(c, "closed by the broker".into());
            return;
        } else if res == -libc::ENOBUFS {
            // Every provided buffer is full of unread bytes: re-arm; the turn frees them.
            self.recv_buffers_exhausted += 1;
        } else {
            self.lost(c, format!("recv: {}", errno_text(res)));
            return;
        }
        if !self.conns[c].recv_armed && self.conns[c].state != State::Closed {
            self.arm_recv(c);
        }
    }

    fn decode_inbox(&mut self, c: usize) {
        let version = self.settings.version;
        // Out of the connection while its packets are handled, so a PUBLISH can borrow it.
        let mut inbox = std::mem::take(&mut self.conns[c].inbox);
        while self.conns[c].state != State::Closed {
            // A PUBLISH without properties, nearly all a run receives, is read in place: no
            // reference count per message (`decode` splits a frame off and slices it).
            if let Some((publish, size)) = publish_at(&inbox, version, PACKET_SIZE_MAX) {
                self.on_publish_packet(c, publish.qos, publish.packet_id, publish.payload);
                inbox.advance(size);
                continue;
            }
            match decode(&mut inbox, version, PACKET_SIZE_MAX) {
                Ok(Some(packet)) => self.handle(c, packet),
                Ok(None) => break,
                Err(e) => {
                    self.lost(c, format!("bad packet from the broker: {e:?}"));
                    break;
                }
            }
        }
        // A closed connection's unread bytes are dropped (a reconnect starts clean).
        if self.conns[c].state != State::Closed {
            self.conns[c].inbox = inbox;
        }
    }

    fn handle(&mut self, c: usize, packet: Packet) {
        let version = self.settings.version;
        match packet {
            Packet::ConnAck(ack) => {
                if self.conns[c].state != State::ConnAckWait {
                    return;
                }
                if ack.code.is_failure() {
                    self.refused += 1;
                    self.connect_failed(c, format!("CONNACK refused: {:?}", ack.code));
                    return;
                }
                if let Some(receive_maximum) = ack.properties.receive_maximum {
                    self.conns[c].inflight_max = u32::from(receive_maximum).min(INFLIGHT_CAP);
                }
                let filter = self.conns[c].filter.as_deref().map(ByteString::from);
                if let Some(filter) = filter {
                    let subscribe = Packet::Subscribe(Subscribe {
                        packet_id: 1,
                        filters: vec![(
                            filter,
                            SubscriptionOptions {
                                qos: self.settings.qos,
                                ..SubscriptionOptions::default()
                            },
                        )],
                        properties: Props::NONE,
                    });
                    if let Err(e) = encode(&subscribe, version, &mut self.conns[c].outbox) {
                        self.connect_failed(c, format!("encoding SUBSCRIBE: {e:?}"));
                        return;
                    }
                    self.mark_dirty(c);
                    self.set_state(c, State::SubAckWait);
                } else {
                    self.became_ready(c);
                }
            }
            Packet::SubAck(ack) => {
                if self.conns[c].state != State::SubAckWait {
                    return;
                }
                match ack.codes.first() {
                    Some(code) if !code.is_failure() => self.became_ready(c),
                    code => {
                        self.subscribe_refused += 1;
                        self.connect_failed(c, format!("SUBACK refused: {code:?}"));
                    }
                }
            }
            Packet::Publish(publish) => {
                self.on_publish_packet(c, publish.qos, publish.packet_id, &publish.payload)
            }
            Packet::PubAck(_) | Packet::PubComp(_) => self.on_ack(c),
            Packet::PubRec(ack) => self.reply(c, &Packet::PubRel(PubAck::new(ack.packet_id))),
            Packet::PubRel(ack) => self.reply(c, &Packet::PubComp(PubAck::new(ack.packet_id))),
            Packet::Disconnect(d) => {
                self.lost(c, format!("DISCONNECT from the broker: {:?}", d.code))
            }
            _ => {} // PINGRESP and anything a client may ignore
        }
    }

    /// A PUBLISH received: counted and timed, and acknowledged as its QoS asks.
    fn on_publish_packet(&mut self, c: usize, qos: QoS, packet_id: u16, payload: &[u8]) {
        self.on_publish(c, payload);
        let reply = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(packet_id))),
            QoS::ExactlyOnce => Some(Packet::PubRec(PubAck::new(packet_id))),
        };
        if let Some(reply) = reply {
            self.reply(c, &reply);
        }
    }

    fn reply(&mut self, c: usize, packet: &Packet) {
        if encode(packet, self.settings.version, &mut self.conns[c].outbox).is_ok() {
            self.mark_dirty(c);
        }
    }

    fn became_ready(&mut self, c: usize) {
        let now = monotonic_ns();
        let conn = &self.conns[c];
        self.connect_latency
            .saturating_record(now.saturating_sub(conn.started_ns).max(1));
        if conn.subscriber != NONE {
            self.subs[conn.subscriber as usize].subscribed = true;
        }
        if self.tls_session.is_none() {
            self.tls_session = conn.tls.as_deref().map(tls::describe);
        }
        self.set_state(c, State::Ready);
        self.connected += 1;
        self.last_ready_ns = now;
        if self.settings.mode == Mode::Churn {
            if now >= self.measure_start_ns && now < self.end_ns {
                self.handshakes_in_window += 1;
            }
            if self.churn_started && now < self.end_ns && !self.stopping {
                self.leave(c);
            }
        }
    }

    /// `handshake`: DISCONNECT, then close once it is sent (`on_send`), then connect again
    /// (`maybe_reconnect`).
    fn leave(&mut self, c: usize) {
        self.conns[c].leaving = true;
        self.reply(c, &Packet::Disconnect(Disconnect::default()));
    }

    /// `handshake`: a connection that left connects again in its slot once its close and every
    /// other operation on the old socket have completed (so no late completion of the old
    /// socket is taken for the new one).
    fn maybe_reconnect(&mut self, c: usize) {
        let conn = &self.conns[c];
        if !conn.leaving
            || conn.state != State::Closed
            || conn.closing
            || conn.recv_armed
            || conn.send_pending
            || self.stopping
        {
            return;
        }
        let now = monotonic_ns();
        if now >= self.end_ns {
            return;
        }
        let conn = &mut self.conns[c];
        conn.leaving = false;
        conn.chain_failed = false;
        conn.tls = None;
        conn.inbox.clear();
        conn.outbox.clear();
        conn.sending.clear();
        conn.send_offset = 0;
        conn.inflight = 0;
        self.start_connect(c, now);
    }

    fn on_ack(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        conn.inflight = conn.inflight.saturating_sub(1);
        if conn.publisher != NONE {
            self.pubs[conn.publisher as usize].acked += 1;
        }
        self.acked += 1;
    }

    /// A message reached a subscriber: sequence bookkeeping, window feedback, latency.
    fn on_publish(&mut self, c: usize, payload: &[u8]) {
        self.received += 1;
        let subscriber = self.conns[c].subscriber;
        let Some(stamp) = Stamp::read(payload) else {
            self.unexpected += 1;
            return;
        };
        let Some(sub) = self.subs.get_mut(subscriber as usize) else {
            self.unexpected += 1;
            return;
        };
        let offset = stamp.publisher_index.wrapping_sub(sub.first_publisher) as usize;
        let Some(tracker) = sub.trackers.get_mut(offset) else {
            self.unexpected += 1;
            return;
        };
        tracker.record(u64::from(stamp.sequence));
        if let Some(delivered) = self.shared.delivered.get(stamp.publisher_index as usize) {
            let next = u64::from(stamp.sequence) + 1;
            if next > delivered.load(Ordering::Relaxed) {
                delivered.fetch_max(next, Ordering::Relaxed);
            }
        }
        if stamp.sent_at_ns >= self.measure_start_ns && stamp.sent_at_ns < self.end_ns {
            self.received_in_window += 1;
            let latency_ns = self.arrived_ns.saturating_sub(stamp.sent_at_ns).max(1);
            self.latency.saturating_record(latency_ns);
            if self.settings.progress {
                self.interval.saturating_record(latency_ns);
            }
        }
    }

    fn learn_start(&mut self) {
        if self.start_ns != 0 {
            return;
        }
        let start = self.shared.start_ns.load(Ordering::Acquire);
        if start == 0 {
            return;
        }
        self.start_ns = start;
        self.measure_start_ns = self.shared.measure_start_ns.load(Ordering::Relaxed);
        self.end_ns = self.shared.end_ns.load(Ordering::Relaxed);
        if let Mode::Rate(total) = self.settings.mode {
            if !self.pubs.is_empty() {
                // This thread's share of the rate, in proportion to its publishers (dealt
                // round-robin), its stream offset by a fraction of an interval so threads do
                // not send in step.
                let threads = self.shared.threads.len() as u64;
                let share = rate_share(
                    total,
                    u64::from(self.settings.publisher_count),
                    threads,
                    self.me as u64,
                );
                // No share (fewer messages per second than threads): this thread sends none.
                if let Some(interval_ns) = 1_000_000_000u64.checked_div(share) {
                    let phase = interval_ns / threads * self.me as u64;
                    self.schedule =
                        Some(Schedule::new(start + phase, share, self.pubs.len() as u32));
                }
            }
        }
    }

    /// Puts every message that is due (rate mode) or that the window allows (max mode) into
    /// its publisher's outbox. Returns when the next one falls due, if that is known.
    fn pump_publishers(&mut self, now: u64) -> Option<u64> {
        if self.start_ns == 0 || now < self.start_ns || self.stopping {
            return (self.start_ns > now).then_some(self.start_ns);
        }
        let qos = self.settings.qos;
        let mut next_ns: Option<u64> = None;
        match self.settings.mode {
            Mode::Idle => {}
            Mode::Churn => {
                if !self.churn_started && now < self.end_ns {
                    self.churn_started = true;
                    for c in 0..self.conns.len() {
                        if self.conns[c].state == State::Ready {
                            self.leave(c);
                        }
                    }
                }
            }
            Mode::Rate(_) => {
                let schedule = self.schedule?;
                // Messages intended at or after the end are never sent; ones intended before
                // it are sent even late (they are the stalls the histogram must show).
                let horizon = now.min(self.end_ns.saturating_sub(1));
                // Walk only the stream indices that fell due since the last turn (not every
                // publisher), then the publishers that could not send all theirs before.
                let due_total = schedule.due_count(horizon);
                while self.stream_cursor < due_total {
                    let (p, _) = schedule.slot(self.stream_cursor);
                    self.stream_cursor += 1;
                    self.pump_rate(p as usize, &schedule, horizon);
                }
                let mut i = 0;
                while i < self.backlog.len() {
                    let p = self.backlog[i] as usize;
                    let closed = self.conns[self.pubs[p].conn as usize].state == State::Closed;
                    if self.send_due(p, &schedule, horizon) || closed {
                        self.pubs[p].backlogged = false;
                        self.backlog.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
                let next = schedule.intended_ns(self.stream_cursor);
                if next < self.end_ns {
                    next_ns = Some(next);
                }
            }
            Mode::Max(window) => {
                if now >= self.end_ns {
                    return None;
                }
                let mut poll_soon = false;
                for p in 0..self.pubs.len() {
                    let c = self.pubs[p].conn as usize;
                    if self.conns[c].state != State::Ready {
                        continue;
                    }
                    if qos == QoS::AtMostOnce {
                        let index = self.pubs[p].index as usize;
                        let delivered = self
                            .shared
                            .delivered
                            .get(index)
                            .map_or(0, |d| d.load(Ordering::Relaxed));
                        let pb = &mut self.pubs[p];
                        if delivered > pb.last_delivered || pb.last_progress_ns == 0 {
                            pb.last_delivered = delivered;
                            pb.last_progress_ns = now;
                        }
                        let floor = delivered.max(pb.window_floor);
                        let mut budget =
                            (window as u64).saturating_sub(pb.sent.saturating_sub(floor));
                        if budget == 0 && now - pb.last_progress_ns > WINDOW_STALL_NS {
                            pb.window_floor = pb.sent;
                            pb.last_progress_ns = now;
                            self.window_stalls += 1;
                            budget = window as u64;
                        }
                        while budget > 0 && self.can_send(c, qos, u32::MAX) {
                            let now = monotonic_ns();
                            self.publish(p, now, now);
                            budget -= 1;
                        }
                        // Deliveries seen on other threads do not wake this ring: poll.
                        poll_soon |= budget == 0;
                    } else {
                        while self.can_send(c, qos, window) {
                            let now = monotonic_ns();
                            self.publish(p, now, now);
                        }
                    }
                }
                if poll_soon {
                    next_ns = Some(now + 200_000);
                }
            }
        }
        next_ns
    }

    /// Sends publisher p's due messages, each stamped with its intended time; what the socket
    /// or the QoS window holds back waits in the backlog (keeping its intended time).
    fn pump_rate(&mut self, p: usize, schedule: &Schedule, horizon: u64) {
        let caught_up = self.send_due(p, schedule, horizon);
        let closed = self.conns[self.pubs[p].conn as usize].state == State::Closed;
        if !caught_up && !closed && !self.pubs[p].backlogged {
            self.send_stalls += 1;
            self.pubs[p].backlogged = true;
            self.backlog.push(p as u32);
        }
    }

    /// Sends what is due for publisher p and the socket and window allow; true when all is sent.
    /// One clock read for the batch (encoding a message takes tens of ns): the send lag it
    /// records is when the batch went into the outbox.
    fn send_due(&mut self, p: usize, schedule: &Schedule, horizon: u64) -> bool {
        let c = self.pubs[p].conn as usize;
        let due = schedule.due_for(p as u32, horizon);
        if self.pubs[p].sent >= due {
            return true;
        }
        let now = monotonic_ns();
        while self.pubs[p].sent < due && self.can_send(c, self.settings.qos, u32::MAX) {
            let index = schedule.index_of(p as u32, self.pubs[p].sent);
            self.publish(p, schedule.intended_ns(index), now);
        }
        self.pubs[p].sent >= due
    }

    fn can_send(&self, c: usize, qos: QoS, window: u32) -> bool {
        let conn = &self.conns[c];
        conn.state == State::Ready
            && conn.outbox.len() < OUTBOX_BYTES_MAX
            && (qos == QoS::AtMostOnce || conn.inflight < conn.inflight_max.min(window))
    }

    /// Stamps `sent_at_ns` (the intended time in rate mode) on the message; `now_ns` is when it
    /// goes into the outbox, for the send lag.
    fn publish(&mut self, p: usize, sent_at_ns: u64, now_ns: u64) {
        let settings = &self.settings;
        let pb = &mut self.pubs[p];
        let c = pb.conn as usize;
        let conn = &mut self.conns[c];
        Stamp {
            sent_at_ns,
            publisher_index: pb.index,
            sequence: pb.sent as u32,
        }
        .write(&mut self.payload);
        let packet_id = if settings.qos == QoS::AtMostOnce {
            0
        } else {
            conn.packet_id_next = conn.packet_id_next.wrapping_add(1).max(1);
            conn.inflight += 1;
            conn.packet_id_next
        };
        let result = encode_publish(
            &mut conn.outbox,
            settings.version,
            &pb.topic,
            &self.payload,
            settings.qos,
            settings.retain,
            false,
            packet_id,
            None,
        );
        if let Err(e) = result {
            self.count_error(format!("encoding PUBLISH: {e:?}"));
            return;
        }
        pb.sent += 1;
        self.sent_total += 1;
        if sent_at_ns >= self.measure_start_ns && sent_at_ns < self.end_ns {
            self.sent_in_window += 1;
            if matches!(self.settings.mode, Mode::Rate(_)) {
                let lag_ns = now_ns.saturating_sub(sent_at_ns).max(1);
                self.send_lag.saturating_record(lag_ns);
            }
        }
        self.mark_dirty(c);
    }

    /// One send per connection with bytes waiting and no send in flight.
    fn flush(&mut self, now: u64) {
        while let Some(c) = self.dirty.pop() {
            let c = c as usize;
            let conn = &mut self.conns[c];
            conn.dirty = false;
            if conn.send_pending
                || matches!(
                    conn.state,
                    State::Closed | State::Waiting | State::Connecting
                )
            {
                continue;
            }
            match conn.tls.as_deref_mut() {
                None if conn.outbox.is_empty() => continue,
                None => std::mem::swap(&mut conn.outbox, &mut conn.sending),
                Some(tls) => {
                    tls::seal(tls, &mut conn.outbox, &mut conn.sending);
                    if conn.sending.is_empty() {
                        continue;
                    }
                }
            }
            conn.send_offset = 0;
            conn.last_sent_ns = now;
            self.submit_send(c);
        }
    }

    fn submit_send(&mut self, c: usize) {
        let slot = self.slot(c);
        let conn = &mut self.conns[c];
        let rest = &conn.sending[conn.send_offset..];
        conn.send_pending = true;
        let entry = opcode::Send::new(types::Fixed(slot), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token(OP_SEND, c));
        self.push(c, entry);
    }

    fn on_send(&mut self, c: usize, res: i32) {
        let conn = &mut self.conns[c];
        conn.send_pending = false;
        if conn.state == State::Closed {
            self.maybe_reconnect(c);
            return;
        }
        if res < 0 {
            self.lost(c, format!("send: {}", errno_text(res)));
            return;
        }
        conn.send_offset += res as usize;
        if conn.send_offset < conn.sending.len() {
            self.submit_send(c);
            return;
        }
        conn.sending.clear();
        conn.send_offset = 0;
        if !conn.outbox.is_empty() || conn.tls.as_ref().is_some_and(|t| t.wants_write()) {
            self.mark_dirty(c);
        } else if conn.leaving {
            self.close(c);
        }
    }

    /// A connection that was up went away: counted as dropped (not during teardown).
    fn lost(&mut self, c: usize, text: String) {
        let state = self.conns[c].state;
        if state == State::Closed {
            return;
        }
        if self.conns[c].leaving {
            // It said DISCONNECT; the broker closing first is the normal end.
            self.close(c);
            return;
        }
        if state.in_handshake() {
            self.connect_failed(c, text);
            return;
        }
        if !self.stopping {
            self.dropped += 1;
            self.count_error(text);
        }
        self.close(c);
    }

    /// Ends the socket: shutdown ends its multishot recv and any stuck send; the hard link
    /// closes the slot whether or not shutdown succeeded.
    fn close(&mut self, c: usize) {
        if self.conns[c].state == State::Closed {
            return;
        }
        let had_socket = self.conns[c].state != State::Waiting;
        self.set_state(c, State::Closed);
        if !had_socket {
            return;
        }
        self.conns[c].closing = true;
        self.reserve_sq(c, 2);
        self.push(
            c,
            opcode::Shutdown::new(types::Fixed(self.slot(c)), libc::SHUT_RDWR)
                .build()
                .flags(squeue::Flags::IO_HARDLINK)
                .user_data(token(OP_SHUTDOWN, c)),
        );
        self.push(
            c,
            opcode::Close::new(types::Fixed(self.slot(c)))
                .build()
                .user_data(token(OP_CLOSE, c)),
        );
    }

    /// Every 100 ms: handshake timeouts, keepalive pings, figures for the progress line.
    fn sweep(&mut self, now: u64) {
        let timeout = self.settings.connect_timeout_ns;
        if self.handshakes > 0 {
            for c in 0..self.conns.len() {
                let conn = &self.conns[c];
                if conn.state.in_handshake() && now.saturating_sub(conn.started_ns) > timeout {
                    let step = match conn.state {
                        State::Connecting => "connect",
                        State::ConnAckWait => "CONNACK",
                        _ => "SUBACK",
                    };
                    self.connect_failed(c, format!("{step}: timed out"));
                }
            }
        }
        if now >= self.next_keepalive_ns {
            self.next_keepalive_ns = now + 1_000_000_000;
            let half_ns = u64::from(self.settings.keepalive_secs) * 500_000_000;
            if half_ns > 0 {
                for c in 0..self.conns.len() {
                    let conn = &self.conns[c];
                    if conn.state == State::Ready
                        && now.saturating_sub(conn.last_sent_ns) >= half_ns
                    {
                        self.reply(c, &Packet::PingReq);
                    }
                }
            }
        }
        if self.next_to_open == self.conns.len() && self.handshakes == 0 {
            self.shared.threads[self.me]
                .ready
                .store(true, Ordering::Release);
        }
        self.publish_progress();
    }

    fn publish_progress(&mut self) {
        let t = &self.shared.threads[self.me];
        t.connected.store(self.connected, Ordering::Relaxed);
        t.failed.store(self.connect_failed, Ordering::Relaxed);
        t.sent.store(self.sent_total, Ordering::Relaxed);
        t.received.store(self.received, Ordering::Relaxed);
        if !self.interval.is_empty() {
            if let Ok(mut h) = t.interval.lock() {
                let _ = h.add(&self.interval);
            }
            self.interval.reset();
        }
    }

    /// DISCONNECT every live connection, give the sends a moment, then close everything and
    /// cancel what is left, so no kernel operation outlives the buffers it points into.
    fn teardown(&mut self) {
        self.stopping = true;
        let disconnect = Packet::Disconnect(Disconnect::default());
        for c in 0..self.conns.len() {
            if self.conns[c].state == State::Ready {
                self.reply(c, &disconnect);
            }
        }
        let deadline = monotonic_ns() + 300_000_000;
        loop {
            let now = monotonic_ns();
            self.flush(now);
            let pending = self
                .conns
                .iter()
                .any(|c| c.send_pending || (!c.outbox.is_empty() && c.state == State::Ready));
            if !pending || now >= deadline {
                break;
            }
            self.wait((deadline - now).min(10_000_000));
            self.reap();
        }
        for c in 0..self.conns.len() {
            self.close(c);
        }
        for slot in &mut self.rings {
            let _ = slot.ring.submit();
            let _ = slot.ring.submitter().register_sync_cancel(
                Some(types::Timespec::new().sec(1)),
                types::CancelBuilder::any(),
            );
        }
        let deadline = monotonic_ns() + 200_000_000;
        while monotonic_ns() < deadline {
            self.wait(5_000_000);
            self.reap();
            if !self.conns.iter().any(|c| c.recv_armed || c.send_pending) {
                break;
            }
        }
    }

    fn result(mut self) -> ThreadResult {
        let mut trackers: BTreeMap<u32, SeqTracker> = BTreeMap::new();
        let mut receivers = Vec::new();
        for sub in &self.subs {
            if sub.subscribed {
                receivers.push((sub.first_publisher, sub.trackers.len() as u32));
            }
            for (i, t) in sub.trackers.iter().enumerate() {
                if t.received > 0 {
                    trackers
                        .entry(sub.first_publisher + i as u32)
                        .or_default()
                        .merge(t);
                }
            }
        }
        // A connection whose sends were still pending at the end would keep its buffers
        // pointed at by the kernel: leak them rather than free memory it may still read.
        if self.conns.iter().any(|c| c.send_pending || c.recv_armed) {
            let conns = std::mem::take(&mut self.conns);
            std::mem::forget(conns);
        }
        ThreadResult {
            latency: std::mem::replace(&mut self.latency, new_histogram()),
            send_lag: std::mem::replace(&mut self.send_lag, new_histogram()),
            connect_latency: std::mem::replace(&mut self.connect_latency, new_histogram()),
            sent: self.pubs.iter().map(|p| (p.index, p.sent)).collect(),
            sent_in_window: self.sent_in_window,
            trackers: trackers.into_iter().collect(),
            receivers,
            received: self.received,
            received_in_window: self.received_in_window,
            connected: self.connected,
            connect_failed: self.connect_failed,
            refused: self.refused,
            subscribe_refused: self.subscribe_refused,
            dropped: self.dropped,
            acked: self.acked,
            unexpected: self.unexpected,
            window_stalls: self.window_stalls,
            send_stalls: self.send_stalls,
            recv_buffers_exhausted: self.recv_buffers_exhausted,
            errors: std::mem::take(&mut self.errors),
            first_connect_ns: self.first_connect_ns,
            last_ready_ns: self.last_ready_ns,
            handshakes_in_window: self.handshakes_in_window,
            tls_session: self.tls_session.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_shares_add_up_to_the_total() {
        for (total, publishers, threads) in [(1000, 3, 2), (7, 5, 3), (20_000, 100, 1), (10, 1, 4)]
        {
            let shares: Vec<u64> = (0..threads)
                .map(|t| rate_share(total, publishers, threads, t))
                .collect();
            assert_eq!(
                shares.iter().sum::<u64>(),
                total,
                "{total} over {publishers}/{threads}"
            );
        }
        // 3 publishers on 2 threads: 2 and 1, so two thirds and one third of the rate.
        assert_eq!(rate_share(1000, 3, 2, 0), 666);
        assert_eq!(rate_share(1000, 3, 2, 1), 334);
        assert_eq!(
            rate_share(10, 1, 4, 1),
            0,
            "a thread without publishers sends nothing"
        );
    }
}
