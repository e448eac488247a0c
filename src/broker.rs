//! Starts the shards and stops them. The API that main.rs and the integration tests use.
//!
//! Each shard gets its own listening socket on the same address (SO_REUSEPORT, so the kernel
//! spreads new connections), its own pinned thread, and builds its ring on that thread (the
//! ring is single-issuer). The shards are joined by the mesh (one SPSC ring per ordered pair)
//! and know each other's wakers and ring descriptors (`shard::peers`); no shard runs before
//! every ring exists, so a hand-off always has a target. `start` returns once every shard
//! reported that its ring is up, or with the first shard's startup error.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::mesh::Mesh;
use crate::ring::nofile_limit;
use crate::shard::peers::Peers;
use crate::shard::{Shard, ShardParams, ShardStats, Waker};

/// Descriptors left to the process (listeners, eventfds, ring fds, stdio, log files) when the
/// fixed-file table is sized from RLIMIT_NOFILE.
pub const FILES_HEADROOM: u64 = 64;

/// Pending connections per listener.
const LISTEN_BACKLOG: i32 = 4096;

struct ShardHandle {
    waker: Arc<Waker>,
    stats: Arc<Mutex<ShardStats>>,
    thread: Option<JoinHandle<ShardStats>>,
}

/// A running broker: its shard threads, listening on `local_addr()`. Dropping it stops them.
pub struct Broker {
    local_addr: SocketAddr,
    shards: Vec<ShardHandle>,
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

/// Fixed-file slots per ring: the configured number, or the open-file limit minus a headroom.
pub fn ring_files(config: &Config) -> u32 {
    if config.ring_files_max > 0 {
        return config.ring_files_max;
    }
    let limit = nofile_limit();
    limit
        .saturating_sub(FILES_HEADROOM)
        .clamp(1, u32::MAX as u64) as u32
}

impl Broker {
    /// Binds the listeners, starts the shard threads, and returns once they accept connections.
    pub fn start(config: Config) -> io::Result<Broker> {
        config.validate().map_err(invalid)?;
        let shard_count = shard_count(&config);
        let auth = match &config.password_file {
            Some(path) => Some(Arc::new(crate::auth::load(path).map_err(invalid)?)),
            None => None,
        };
        let files = ring_files(&config);
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if shard_count > cores.len() && !cores.is_empty() {
            eprintln!(
                "ringmq: warning: {shard_count} shards on {} cores: some shards share a core",
                cores.len()
            );
        }

        let first = bind_listener(config.listen, config.socket_send_buffer_bytes)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..shard_count {
            // Port 0 picked a port for the first listener; the others join it.
            listeners.push(bind_listener(local_addr, config.socket_send_buffer_bytes)?);
        }

        let mut broker = Broker {
            local_addr,
            shards: Vec::with_capacity(shard_count),
        };
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, io::Result<()>)>();
        let wakers = (0..shard_count)
            .map(|_| Waker::new())
            .collect::<io::Result<Vec<_>>>()?;
        let peers = Peers::new(wakers.clone(), config.rings_per_shard);
        let meshes = Mesh::new(
            shard_count,
            config.limits.mesh_ring_capacity.max(1) as usize,
        );
        let go = Arc::new(Barrier::new(shard_count));
        let done = Arc::new(Barrier::new(shard_count));
        for ((index, listener), (mesh, waker)) in listeners
            .into_iter()
            .enumerate()
            .zip(meshes.into_iter().zip(wakers))
        {
            let stats = Arc::new(Mutex::new(ShardStats::default()));
            let params = ShardParams {
                index,
                config: config.clone(),
                listener,
                waker: waker.clone(),
                auth: auth.clone(),
                files,
                published_stats: stats.clone(),
                mesh,
                peers: peers.clone(),
            };
            let core = cores.get(index % cores.len().max(1)).copied();
            let ready = ready_tx.clone();
            let (go, done) = (go.clone(), done.clone());
            let thread = std::thread::Builder::new()
                .name(format!("ringmq-shard-{index}"))
                .spawn(move || run_shard(params, core, ready, go, done))?;
            broker.shards.push(ShardHandle {
                stats,
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
        let limit = nofile_limit();
        let headroom = if config.ring_files_max > 0 {
            "ring_files_max from the config".to_string()
        } else {
            format!("RLIMIT_NOFILE {limit} minus headroom {FILES_HEADROOM}")
        };
        let per_shard = files as u64 * config.rings_per_shard as u64;
        for index in 0..shard_count {
            eprintln!(
                "ringmq: shard {index}: {} ring × {files} slots = {per_shard} connections \
                 ({headroom})",
                config.rings_per_shard,
            );
        }
        eprintln!(
            "ringmq: capacity {} connections: {shard_count} shards × {} rings × {files} slots \
             (each ring's fixed-file table is capped by the open-file limit on its own; \
             a hand-off tries the home shard's rings in order)",
            per_shard * shard_count as u64,
            config.rings_per_shard,
        );
        eprintln!("ringmq: listening on {local_addr}");
        Ok(broker)
    }

    /// The address the broker listens on (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Each shard's counters as of its last timer tick (about once a second), in shard order.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards
            .iter()
            .map(|shard| shard.stats.lock().map(|s| s.clone()).unwrap_or_default())
            .collect()
    }

    /// Stops every shard and waits for its thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for shard in &self.shards {
            shard.waker.request_stop();
        }
        for (index, shard) in self.shards.iter_mut().enumerate() {
            let Some(thread) = shard.thread.take() else {
                continue;
            };
            match thread.join() {
                Ok(stats) => eprintln!("ringmq: shard {index} stopped: {stats}"),
                Err(_) => eprintln!("ringmq: shard {index} panicked"),
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
/// wait until every shard is built (a hand-off needs its target's ring), run. On the way out
/// the rings stay open until every shard has stopped: another shard may still send a MSG_RING
/// to one of their descriptors, and a closed descriptor's number could meanwhile name someone
/// else's ring.
fn run_shard(
    params: ShardParams,
    core: Option<core_affinity::CoreId>,
    ready: mpsc::Sender<(usize, io::Result<()>)>,
    go: Arc<Barrier>,
    done: Arc<Barrier>,
) -> ShardStats {
    let index = params.index;
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
    let peers = params.peers.clone();
    let mut shard = match Shard::new(params) {
        Ok(shard) => shard,
        Err(e) => {
            let _ = ready.send((index, Err(e)));
            go.wait();
            done.wait();
            return ShardStats::default();
        }
    };
    for (ring, fd) in shard.ring_fds().into_iter().enumerate() {
        peers.set_ring_fd(index, ring, fd);
    }
    let _ = ready.send((index, Ok(())));
    drop(ready);
    go.wait();
    if let Err(e) = shard.run() {
        eprintln!("ringmq: shard {index} stopped on an error: {e}");
    }
    done.wait();
    shard.stats().clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    fn test_config() -> Config {
        Config {
            listen: "127.0.0.1:0".parse().expect("address"),
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
        broker.stop();
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
        broker.stop();
        let auto = Config {
            shards: 0,
            ..test_config()
        };
        assert!(shard_count(&auto) >= 1);
    }

    #[test]
    fn ring_files_come_from_the_config_or_the_limit() {
        assert_eq!(ring_files(&test_config()), 64);
        let from_limit = ring_files(&Config::default()) as u64;
        assert_eq!(
            from_limit,
            nofile_limit()
                .saturating_sub(FILES_HEADROOM)
                .clamp(1, 1 << 24)
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
            listen: "127.0.0.1:0".parse().expect("address"),
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
        broker.stop();
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
