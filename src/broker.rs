//! Starts the shards and stops them. The API that main.rs and the integration tests use.
//!
//! Each shard gets its own listening socket on the same address (SO_REUSEPORT, so the kernel
//! spreads new connections), its own pinned thread, and builds its ring on that thread (the
//! ring is single-issuer). The shards are joined by the mesh (one SPSC ring per ordered pair)
//! and know each other's wakers and ring descriptors (`shard::peers`); no shard runs before
//! every ring exists, so a hand-off always has a target. `start` returns once every shard
//! reported that its ring is up, or with the first shard's startup error.
//!
//! A shard that panics (or whose loop fails) takes the whole broker down, fast: half a broker
//! would keep accepting clients homed on the dead shard and never answer them. The shard logs
//! its index and the panic, every shard is asked to stop, `failure()` reports it at once (main
//! exits non-zero, and a supervisor restarts the process), and `stop()` returns it. Nothing a
//! dead shard does (or fails to do) can block the others: they meet through `Lives`, a state
//! that every thread updates on its way out, panicking or not, never through a barrier.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, ListenerProtocol};
use crate::listener::Listener;
use crate::mesh::Mesh;
use crate::metrics::MetricsServer;
use crate::ring::{nofile_limit, FIXED_FILES_MAX};
use crate::security::Security;
use crate::shard::peers::Peers;
use crate::shard::{Shard, ShardParams, ShardStats, StatsBoard, Waker};

/// Descriptors left to the process (listeners, eventfds, ring fds, stdio, log files) when the
/// fixed-file table is sized from RLIMIT_NOFILE.
pub const FILES_HEADROOM: u64 = 64;

/// Pending connections per listener.
const LISTEN_BACKLOG: i32 = 4096;

struct ShardHandle {
    waker: Arc<Waker>,
    thread: Option<JoinHandle<ShardStats>>,
}

/// A running broker: its shard threads, listening on `local_addr()`. Dropping it stops them.
pub struct Broker {
    local_addrs: Vec<SocketAddr>,
    listeners: Arc<Vec<Listener>>,
    shards: Vec<ShardHandle>,
    lives: Arc<Lives>,
    /// The password and ACL files, which `reload` reads again.
    security: Arc<Security>,
    /// Each shard's counters as of its last tick (`shard::stats`).
    board: Arc<StatsBoard>,
    /// The Prometheus endpoint, when `metrics_listen` is set.
    metrics: Option<MetricsServer>,
    /// The persistence directory's lock, held while the broker lives.
    _persistence_lock: Option<std::fs::File>,
}

/// A shard that left its loop without being asked to: the broker is down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFailure {
    pub shard: usize,
    /// True for a panic, false for an I/O error the loop returned.
    pub panicked: bool,
    /// The panic message, or the error.
    pub message: String,
}

impl fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.panicked {
            "panicked"
        } else {
            "stopped on an error"
        };
        write!(f, "shard {} {how}: {}", self.shard, self.message)
    }
}

impl std::error::Error for ShardFailure {}

/// What the shard threads and the broker share about the shards' lives, in place of barriers
/// (a thread that dies before its `wait` blocks a barrier forever).
struct Lives {
    state: Mutex<LivesState>,
    changed: Condvar,
    wakers: Vec<Arc<Waker>>,
}

struct LivesState {
    /// `None` until `start` has heard from every shard: then `Some(true)` to run (every ring
    /// exists, so a hand-off has a target) or `Some(false)` to give up.
    go: Option<bool>,
    /// Shard threads still in their loop (or before it). A shard keeps its rings open until
    /// this is 0: see `run_shard`.
    running: usize,
    /// The first failure; later ones are logged only.
    failure: Option<ShardFailure>,
}

impl Lives {
    fn new(wakers: Vec<Arc<Waker>>) -> Lives {
        Lives {
            state: Mutex::new(LivesState {
                go: None,
                running: wakers.len(),
                failure: None,
            }),
            changed: Condvar::new(),
            wakers,
        }
    }

    /// Nothing panics while holding the lock, but a poisoned state is still the state.
    fn lock(&self) -> MutexGuard<'_, LivesState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_while(
        &self,
        blocked: impl FnMut(&mut LivesState) -> bool,
    ) -> MutexGuard<'_, LivesState> {
        self.changed
            .wait_while(self.lock(), blocked)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets the shards run (`true`) or sends them home (`false`); only the first call counts.
    fn decide(&self, go: bool) {
        let mut state = self.lock();
        state.go.get_or_insert(go);
        drop(state);
        self.changed.notify_all();
    }

    /// Waits for `decide`; true to run.
    fn wait_go(&self) -> bool {
        self.wait_while(|state| state.go.is_none()).go == Some(true)
    }

    /// Logs `failure`, keeps it if it is the first, and asks every shard to stop.
    fn fail(&self, failure: ShardFailure) {
        log::error!("{failure}; stopping every shard");
        self.lock().failure.get_or_insert(failure);
        self.changed.notify_all();
        for waker in &self.wakers {
            waker.request_stop();
        }
    }

    /// This shard thread left its loop (or never reached it).
    fn leave(&self) {
        self.lock().running -= 1;
        self.changed.notify_all();
    }

    fn wait_all_left(&self) {
        drop(self.wait_while(|state| state.running > 0));
    }

    fn failure(&self) -> Option<ShardFailure> {
        self.lock().failure.clone()
    }
}

/// The message a panic carried (`panic!` with a literal or with format arguments).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Test seam: a client connecting with this id makes its home shard panic, but only in a
/// broker started with `RINGMQ_TEST_PANIC=1` in its environment (tests/cli.rs, and the tests
/// of a shard failure). Checked once per CONNECT, never on the publish path.
#[doc(hidden)]
pub const TEST_PANIC_CLIENT_ID: &str = "ringmq-test-panic";

/// Set by `Broker::start` from `RINGMQ_TEST_PANIC`, for the process (never cleared).
static TEST_PANIC_ARMED: AtomicBool = AtomicBool::new(false);
/// `RINGMQ_TEST_PANIC=2`: the failed shard's cleanup (`Shard::stop_after_failure`) panics too.
static TEST_PANIC_CLEANUP: AtomicBool = AtomicBool::new(false);

/// Called by the cleanup after a shard failure: panics when `RINGMQ_TEST_PANIC=2`.
#[doc(hidden)]
pub fn panic_in_cleanup_if_test_asks() {
    if TEST_PANIC_CLEANUP.load(Ordering::Relaxed) {
        panic!("test panic in the cleanup (RINGMQ_TEST_PANIC=2)");
    }
}

/// Called at CONNECT: panics for `TEST_PANIC_CLIENT_ID` when the test seam is armed.
#[doc(hidden)]
#[inline]
#[track_caller]
pub fn panic_if_test_asks(client_id: &str) {
    if TEST_PANIC_ARMED.load(Ordering::Relaxed) && client_id == TEST_PANIC_CLIENT_ID {
        panic!("test panic: client id {client_id} connected with RINGMQ_TEST_PANIC=1");
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// A listener that shares its port with the other shards' (SO_REUSEPORT). TCP_NODELAY (and
/// SO_SNDBUF when configured) are set here because accepted sockets inherit them, and direct
/// descriptors cannot take a plain setsockopt.
fn bind_listener(addr: SocketAddr, send_buffer_bytes: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    if send_buffer_bytes > 0 {
        socket.set_send_buffer_size(send_buffer_bytes as usize)?;
    }
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Fails when another socket already listens on `addr`. The shards' listeners share their
/// port through SO_REUSEPORT, which would also let them join a group another process (a
/// second ringmq, same user) holds, silently splitting its clients; a socket without
/// SO_REUSEPORT cannot bind there, so a brief bind of one tells.
fn check_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e} (is another broker running there?)"),
        )
    })
}

/// Fixed-file slots per ring: the configured number, or the open-file limit minus a headroom,
/// at most the kernel's cap per table (a hard limit above a million would fail registration).
pub fn ring_files(config: &Config) -> u32 {
    if config.ring_files_max > 0 {
        // At most FIXED_FILES_MAX once validated; capped here too for a config built in code.
        return config.ring_files_max.min(FIXED_FILES_MAX as u32);
    }
    nofile_limit()
        .saturating_sub(FILES_HEADROOM)
        .clamp(1, FIXED_FILES_MAX) as u32
}

impl Broker {
    /// Binds the listeners, starts the shard threads, and returns once they accept connections.
    pub fn start(config: Config) -> io::Result<Broker> {
        config.validate().map_err(invalid)?;
        match std::env::var_os("RINGMQ_TEST_PANIC") {
            Some(value) if value == "1" => TEST_PANIC_ARMED.store(true, Ordering::Relaxed),
            Some(value) if value == "2" => {
                TEST_PANIC_ARMED.store(true, Ordering::Relaxed);
                TEST_PANIC_CLEANUP.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        let shard_count = shard_count(&config);
        let security = Arc::new(Security::load(&config).map_err(invalid)?);
        let files = ring_files(&config);
        // Replayed (and snapshotted as the next generation) before any shard accepts.
        let (mut logs, restored, persistence_lock) = match config.persistence.dir() {
            Some(dir) => {
                let opened = crate::persist::open(dir, shard_count).map_err(invalid)?;
                let queued: usize = opened
                    .restored
                    .sessions
                    .iter()
                    .map(|s| s.messages.len())
                    .sum();
                log::info!(
                    "persistence: {} restored {} retained messages, {} sessions with {queued} \
                     queued messages",
                    dir.display(),
                    opened.restored.retained.len(),
                    opened.restored.sessions.len(),
                );
                (opened.logs, Some(opened.restored), Some(opened.lock))
            }
            None => (Vec::new(), None, None),
        };
        logs.reverse();
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if shard_count > cores.len() && !cores.is_empty() {
            log::warn!(
                "{shard_count} shards on {} cores: some shards share a core",
                cores.len()
            );
        }

        // Every listener on every shard: shard k gets socket k of each (SO_REUSEPORT).
        let listener_configs = config.listeners();
        let listeners = listener_configs
            .iter()
            .map(Listener::new)
            .collect::<Result<Vec<_>, String>>()
            .map_err(invalid)?;
        let listeners = Arc::new(listeners);
        let mut local_addrs = Vec::with_capacity(listener_configs.len());
        let mut sockets: Vec<Vec<TcpListener>> = (0..shard_count).map(|_| Vec::new()).collect();
        for listener in &listener_configs {
            check_port_free(listener.bind)?;
            let first = bind_listener(listener.bind, config.socket_send_buffer_bytes)?;
            let local_addr = first.local_addr()?;
            local_addrs.push(local_addr);
            sockets[0].push(first);
            for shard_sockets in sockets.iter_mut().skip(1) {
                // Port 0 picked a port for the first socket; the others join it.
                shard_sockets.push(bind_listener(local_addr, config.socket_send_buffer_bytes)?);
            }
        }

        let (ready_tx, ready_rx) = mpsc::channel::<(usize, io::Result<()>)>();
        let wakers = (0..shard_count)
            .map(|_| Waker::new())
            .collect::<io::Result<Vec<_>>>()?;
        let lives = Arc::new(Lives::new(wakers.clone()));
        let board = Arc::new(StatsBoard::new(shard_count));
        let mut broker = Broker {
            local_addrs: local_addrs.clone(),
            listeners: listeners.clone(),
            shards: Vec::with_capacity(shard_count),
            lives: lives.clone(),
            security: security.clone(),
            board: board.clone(),
            metrics: None,
            _persistence_lock: persistence_lock,
        };
        let peers = Peers::new(wakers.clone(), config.rings_per_shard);
        let meshes = Mesh::new(
            shard_count,
            config.limits.mesh_ring_capacity_for(shard_count),
        );
        for ((index, sockets), (mesh, waker)) in sockets
            .into_iter()
            .enumerate()
            .zip(meshes.into_iter().zip(wakers))
        {
            let params = ShardParams {
                index,
                config: config.clone(),
                sockets,
                listeners: listeners.clone(),
                waker: waker.clone(),
                security: security.clone(),
                files,
                board: board.clone(),
                mesh,
                peers: peers.clone(),
                persistence: restored
                    .as_ref()
                    .and_then(|retained| Some((logs.pop()?, retained.clone()))),
            };
            let core = cores.get(index % cores.len().max(1)).copied();
            let ready = ready_tx.clone();
            let shard_lives = lives.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ringmq-shard-{index}"))
                .spawn(move || run_shard(params, core, ready, shard_lives));
            let thread = match thread {
                Ok(thread) => thread,
                Err(e) => {
                    // The shards not started never count down `running`: do it for them.
                    for _ in index..shard_count {
                        lives.leave();
                    }
                    broker.shutdown();
                    return Err(e);
                }
            };
            broker.shards.push(ShardHandle {
                waker,
                thread: Some(thread),
            });
        }
        drop(ready_tx);
        for _ in 0..shard_count {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(e))) => {
                    broker.shutdown();
                    return Err(io::Error::new(e.kind(), format!("shard {index}: {e}")));
                }
                Err(_) => {
                    broker.shutdown();
                    return Err(io::Error::other("a shard thread ended before it was ready"));
                }
            }
        }
        if let Some(addr) = config.metrics_listen {
            match MetricsServer::start(addr, board, std::time::Instant::now()) {
                Ok(server) => {
                    log::info!("metrics on http://{}/metrics", server.local_addr());
                    broker.metrics = Some(server);
                }
                Err(e) => {
                    broker.shutdown();
                    return Err(e);
                }
            }
        }
        lives.decide(true);
        let limit = nofile_limit();
        let headroom = if config.ring_files_max > 0 {
            "ring_files_max from the config".to_string()
        } else {
            format!("RLIMIT_NOFILE {limit} minus headroom {FILES_HEADROOM}")
        };
        let per_shard = files as u64 * config.rings_per_shard as u64;
        for index in 0..shard_count {
            log::info!(
                "shard {index}: {} ring × {files} slots = {per_shard} connections \
                 ({headroom}); {} receive buffers per ring",
                config.rings_per_shard,
                config.recv_buffers_per_ring(),
            );
        }
        log::info!(
            "capacity {} connections: {shard_count} shards × {} rings × {files} slots \
             (each ring's fixed-file table is capped by the open-file limit on its own; \
             a hand-off tries the home shard's rings in order)",
            per_shard * shard_count as u64,
            config.rings_per_shard,
        );
        for (listener, addr) in listener_configs.iter().zip(&local_addrs) {
            let protocol = match listener.protocol {
                ListenerProtocol::Mqtt => "mqtt",
                ListenerProtocol::MqttTls => "mqtt+tls",
                ListenerProtocol::Ws => "ws",
                ListenerProtocol::Wss => "wss",
            };
            log::info!("listening on {addr} ({protocol})");
        }
        Ok(broker)
    }

    /// Reads the password and ACL files again (SIGHUP) and wakes every shard, which takes them
    /// at its next loop turn: connections stay, their next operations meet the new rules. On
    /// an error (which names the file and line) the old files stay in force.
    /// TLS listeners read their certificate, key and CA files again too (`reload_tls`); one
    /// that fails keeps its old files, and the summary says so.
    pub fn reload(&self) -> Result<String, String> {
        let tls = self.reload_tls();
        let summary = self.security.reload()?;
        for shard in &self.shards {
            shard.waker.wake();
        }
        Ok(match tls {
            Ok(()) => summary,
            Err(e) => format!("{summary}; TLS files kept: {e}"),
        })
    }

    /// The address the broker's first listener listens on (the real port when the config
    /// asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    /// Every listener's address, in `Config::listeners` order.
    pub fn listener_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Reads every TLS listener's certificate, key and CA files again (for SIGHUP): new
    /// connections use them, connections already up keep theirs. On an error the listener
    /// keeps its old files and the error names the file; the other listeners reload anyway.
    pub fn reload_tls(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        for listener in self.listeners.iter() {
            if let Some(tls) = &listener.tls {
                if let Err(e) = tls.reload() {
                    errors.push(format!("listener {}: {e}", listener.config.bind));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Each shard's counters as of its last timer tick (about once a second), in shard order.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.board.read_all()
    }

    /// Where `GET /metrics` is served (the real port when `metrics_listen` asked for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// The first shard that panicked or failed, as soon as it did (the other shards are then
    /// stopping already). For a process waiting on signals: poll it, and exit non-zero.
    pub fn failure(&self) -> Option<ShardFailure> {
        self.lives.failure()
    }

    /// Stops every shard and waits for its thread to end. `Err` when a shard panicked or its
    /// loop failed, at any time: tests and main must not mistake that for a clean stop.
    pub fn stop(mut self) -> Result<(), ShardFailure> {
        self.shutdown();
        match self.lives.failure() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        if let Some(mut metrics) = self.metrics.take() {
            metrics.stop();
        }
        // Shards still waiting to start are sent home (`start` failed).
        self.lives.decide(false);
        for shard in &self.shards {
            shard.waker.request_stop();
        }
        for (index, shard) in self.shards.iter_mut().enumerate() {
            let Some(thread) = shard.thread.take() else {
                continue;
            };
            match thread.join() {
                Ok(stats) => log::info!("shard {index} stopped: {stats}"),
                // A panic outside the loop's guard (dropping the shard): still a failure.
                Err(payload) => self.lives.fail(ShardFailure {
                    shard: index,
                    panicked: true,
                    message: panic_message(&*payload),
                }),
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Shards to run: the configured number, or (0) one per CPU available to the process.
pub fn shard_count(config: &Config) -> usize {
    match config.shards {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(crate::mesh::SHARDS_MAX),
        n => n,
    }
}

/// The shard thread: pin, build the ring here (single issuer), publish its descriptor, report,
/// wait until `start` saw every shard built (a hand-off needs its target's ring), run. A panic
/// or an error ends the loop and stops every shard (`Lives::fail`). On the way out the rings
/// stay open until every shard has left its loop: another shard may still send a MSG_RING to
/// one of their descriptors, and a closed descriptor's number could meanwhile name someone
/// else's ring. A shard that panicked or failed first stops like one asked to stop
/// (`Shard::stop_after_failure`: its connections shut down, every operation cancelled and
/// waited for), under a guard of its own: if that cannot confirm that the kernel holds
/// nothing of the shard's memory, or panics too, the shard is leaked instead of dropped (the
/// process is on its way out anyway), so the kernel never writes into freed memory.
fn run_shard(
    params: ShardParams,
    core: Option<core_affinity::CoreId>,
    ready: mpsc::Sender<(usize, io::Result<()>)>,
    lives: Arc<Lives>,
) -> ShardStats {
    let index = params.index;
    crate::logger::set_shard(index);
    let peers = params.peers.clone();
    let built = panic::catch_unwind(AssertUnwindSafe(|| {
        if let Some(core) = core {
            core_affinity::set_for_current(core);
        }
        match crate::sched::set_slice(params.config.sched_slice_us) {
            // Said once: every shard would say the same.
            Err(e) if index == 0 => log::warn!(
                "sched_slice_us = {} not applied: {e}; shards keep the kernel's time slice",
                params.config.sched_slice_us
            ),
            _ => {}
        }
        Shard::new(params)
    }));
    let mut shard = match built {
        Ok(Ok(shard)) => shard,
        Ok(Err(e)) => {
            let _ = ready.send((index, Err(e)));
            lives.leave();
            return ShardStats::default();
        }
        Err(payload) => {
            let failure = ShardFailure {
                shard: index,
                panicked: true,
                message: panic_message(&*payload),
            };
            let _ = ready.send((index, Err(io::Error::other(failure.to_string()))));
            lives.fail(failure);
            lives.leave();
            return ShardStats::default();
        }
    };
    for (ring, fd) in shard.ring_fds().into_iter().enumerate() {
        peers.set_ring_fd(index, ring, fd);
    }
    let _ = ready.send((index, Ok(())));
    drop(ready);
    let mut leak = false;
    if lives.wait_go() {
        let failure = match panic::catch_unwind(AssertUnwindSafe(|| shard.run())) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some((false, e.to_string())),
            Err(payload) => Some((true, panic_message(&*payload))),
        };
        if let Some((panicked, message)) = failure {
            lives.fail(ShardFailure {
                shard: index,
                panicked,
                message,
            });
            leak = !clean_up_after_failure(&mut shard);
        }
    }
    lives.leave();
    lives.wait_all_left();
    let stats = shard.stats().clone();
    if leak {
        std::mem::forget(shard);
    }
    stats
}

/// The failed shard's cleanup, guarded (on its thread: its lines name it); true when the shard
/// may be dropped.
fn clean_up_after_failure(shard: &mut Shard) -> bool {
    match panic::catch_unwind(AssertUnwindSafe(|| shard.stop_after_failure())) {
        Ok(true) => {
            log::warn!("in-flight operations cancelled after the failure");
            true
        }
        Ok(false) => {
            log::error!(
                "in-flight operations not confirmed ended after the \
                 failure: its memory is left to the process's end"
            );
            false
        }
        Err(payload) => {
            log::error!(
                "the cleanup after the failure panicked too ({}): its \
                 memory is left to the process's end",
                panic_message(&*payload)
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    fn test_config() -> Config {
        Config {
            listen: Some("127.0.0.1:0".parse().expect("address")),
            shards: 1,
            ring_files_max: 64,
            recv_buffer_count: 64,
            ..Config::default()
        }
    }

    #[test]
    fn start_reports_the_real_port_serves_and_publishes_stats() {
        let broker = Broker::start(test_config()).expect("start");
        let addr = broker.local_addr();
        assert_ne!(addr.port(), 0, "port 0 resolved to the real port");
        let mut client = TcpStream::connect(addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // CONNECT, MQTT 3.1.1, clean session, keepalive 60, client id "s".
        let connect = [
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b's',
        ];
        client.write_all(&connect).expect("write");
        let mut connack = [0u8; 4];
        client.read_exact(&mut connack).expect("CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while broker.stats()[0].connections != 1 {
            assert!(
                Instant::now() < deadline,
                "stats never showed the connection"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(broker.stats()[0].connections_accepted, 1);
        broker.stop().expect("no shard failed");
        // The shard closed the connection on its way out.
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[test]
    fn several_shards_start_and_stop() {
        let config = Config {
            shards: 3,
            ..test_config()
        };
        let broker = Broker::start(config).expect("start");
        assert_eq!(broker.stats().len(), 3);
        broker.stop().expect("no shard failed");
        let auto = Config {
            shards: 0,
            ..test_config()
        };
        assert!(shard_count(&auto) >= 1);
    }

    /// Issue 7: a panicking shard stopped nobody: the other shards waited forever on a
    /// barrier at stop, and nothing reported it. Now the panic stops every shard at once,
    /// `failure()` names the shard and the message, and `stop()` returns it.
    #[test]
    fn issue_7_a_shard_panic_stops_the_broker_and_stop_reports_it() {
        TEST_PANIC_ARMED.store(true, Ordering::Relaxed);
        let broker = Broker::start(Config {
            shards: 2,
            ..test_config()
        })
        .expect("start");
        let home = crate::mesh::home_shard(TEST_PANIC_CLIENT_ID.as_bytes(), 2);
        let mut client = TcpStream::connect(broker.local_addr()).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let id = TEST_PANIC_CLIENT_ID.as_bytes();
        let mut connect = vec![0x10, 12 + id.len() as u8, 0, 4];
        connect.extend_from_slice(b"MQTT");
        connect.extend_from_slice(&[4, 0x02, 0, 60, 0, id.len() as u8]);
        connect.extend_from_slice(id);
        client.write_all(&connect).expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        let failure = loop {
            if let Some(failure) = broker.failure() {
                break failure;
            }
            assert!(Instant::now() < deadline, "no failure reported");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(failure.shard, home);
        assert!(failure.panicked);
        assert!(failure.message.contains("test panic"), "{failure}");
        // Every shard stops on its own: the connection closes without a CONNACK.
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
        // Bounded: a stop that hangs fails the test instead of hanging it.
        let (stopped, result) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = stopped.send(broker.stop());
        });
        let result = result
            .recv_timeout(Duration::from_secs(5))
            .expect("stop returned");
        assert_eq!(result, Err(failure));
    }

    #[test]
    fn ring_files_come_from_the_config_or_the_limit() {
        assert_eq!(ring_files(&test_config()), 64);
        let from_limit = ring_files(&Config::default()) as u64;
        assert_eq!(
            from_limit,
            nofile_limit()
                .saturating_sub(FILES_HEADROOM)
                .clamp(1, 1 << 20)
        );
        let huge = Config {
            ring_files_max: u32::MAX,
            ..Config::default()
        };
        assert_eq!(
            ring_files(&huge),
            1 << 20,
            "the kernel's IORING_MAX_FIXED_FILES"
        );
    }
}

/// Heap bytes per idle, subscribed connection, measured in-process with glibc's `mallinfo2`
/// (the unit-test binary runs on the system allocator). Ignored by default because parallel
/// tests would disturb the count: `cargo test --lib -- --ignored --test-threads=1 idle_heap`.
#[cfg(test)]
mod memory {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    fn heap_in_use() -> usize {
        // SAFETY: mallinfo2 only reads allocator statistics. Large blocks are mmapped and
        // counted apart (hblkhd).
        let info = unsafe { libc::mallinfo2() };
        info.uordblks + info.hblkhd
    }

    fn connect_subscribed(addr: SocketAddr, n: usize) -> TcpStream {
        let mut client = TcpStream::connect(addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let id = format!("idle-{n:06}");
        let mut connect = vec![0x10, (12 + id.len()) as u8, 0, 4];
        connect.extend_from_slice(b"MQTT");
        connect.extend_from_slice(&[4, 0x02, 0, 60, 0, id.len() as u8]);
        connect.extend_from_slice(id.as_bytes());
        let topic = format!("bench/idle/{n}");
        let mut subscribe = vec![0x82, (5 + topic.len()) as u8, 0, 1, 0, topic.len() as u8];
        subscribe.extend_from_slice(topic.as_bytes());
        subscribe.push(0);
        connect.extend_from_slice(&subscribe);
        client.write_all(&connect).expect("write");
        let mut acks = [0u8; 9];
        client.read_exact(&mut acks).expect("CONNACK + SUBACK");
        assert_eq!(acks, [0x20, 2, 0, 0, 0x90, 3, 0, 1, 0]);
        client
    }

    /// Heap per idle subscribed connection (each on a topic of its own) with `shards` shards.
    fn idle_heap(shards: usize) -> usize {
        let config = Config {
            listen: Some("127.0.0.1:0".parse().expect("address")),
            shards,
            ring_files_max: 8192,
            ..Config::default()
        };
        let broker = Broker::start(config).expect("start");
        let addr = broker.local_addr();
        let settle = |broker: &Broker, count: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while broker.stats().iter().map(|s| s.connections).sum::<u64>() != count {
                assert!(Instant::now() < deadline, "shards never reached {count}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let warm: Vec<TcpStream> = (0..500).map(|n| connect_subscribed(addr, n)).collect();
        settle(&broker, 500);
        let before = heap_in_use();
        let count = 5000;
        let clients: Vec<TcpStream> = (500..500 + count)
            .map(|n| connect_subscribed(addr, n))
            .collect();
        settle(&broker, 500 + count as u64);
        let after = heap_in_use();
        // The clients' own heap (TcpStream is an fd, the Vec is 4 B each) is noise.
        let per_connection = (after.saturating_sub(before)) / count;
        eprintln!("heap per idle subscribed connection, {shards} shards: {per_connection} B");
        drop((warm, clients));
        broker.stop().expect("no shard failed");
        per_connection
    }

    #[test]
    #[ignore]
    fn idle_heap_per_subscribed_connection() {
        let per_connection = idle_heap(1);
        assert!(
            per_connection < 2048,
            "{per_connection} B per idle connection"
        );
    }

    /// With several shards every other shard also holds each filter in its interest index.
    #[test]
    #[ignore]
    fn idle_heap_per_subscribed_connection_two_shards() {
        let per_connection = idle_heap(2);
        assert!(
            per_connection < 4096,
            "{per_connection} B per idle connection"
        );
    }
}
