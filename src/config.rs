//! Config and Limits: every bound the broker enforces, with defaults that serve a benchmark
//! and a production host alike, read from an optional TOML file and overridden by flags.
//! A bad file names the key and what is wrong with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What a listener speaks. Each is a transport under the same MQTT inbox/outbox path
/// (`shard::transport`): plain bytes, TLS records around them, WebSocket frames around them,
/// or both (`wss`: TLS, then WebSocket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum ListenerProtocol {
    #[default]
    #[serde(rename = "mqtt")]
    Mqtt,
    #[serde(rename = "mqtt+tls")]
    MqttTls,
    #[serde(rename = "ws")]
    Ws,
    #[serde(rename = "wss")]
    Wss,
}

/// One `[[listener]]`: an address every shard listens on (SO_REUSEPORT) and what it speaks.
/// The TLS keys are named as mosquitto names them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    pub protocol: ListenerProtocol,
    /// Connections open through this listener at once (the whole broker); over it a new one is
    /// closed at accept. 0 = only `limits.connections_max` applies. `max_connections`, as
    /// mosquitto names it, is the same key.
    #[serde(alias = "max_connections")]
    pub connections_max: u32,
    /// The request path of a `ws`/`wss` listener's upgrade; another gets 404.
    pub path: String,
    /// This listener's own `allow_anonymous`; none: the top-level one.
    pub allow_anonymous: Option<bool>,
    /// PEM file of the CAs that client certificates must chain to (`require_certificate`).
    pub cafile: Option<PathBuf>,
    /// PEM certificate chain of the server, leaf first.
    pub certfile: Option<PathBuf>,
    /// PEM private key of the server (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: Option<PathBuf>,
    /// A client must present a certificate that chains to `cafile`.
    pub require_certificate: bool,
    /// The client certificate's Common Name is the username; no password is checked.
    pub use_identity_as_username: bool,
}

impl Default for ListenerConfig {
    fn default() -> ListenerConfig {
        ListenerConfig {
            bind: "0.0.0.0:1883".parse().expect("valid default address"),
            protocol: ListenerProtocol::Mqtt,
            connections_max: 0,
            path: DEFAULT_WS_PATH.into(),
            allow_anonymous: None,
            cafile: None,
            certfile: None,
            keyfile: None,
            require_certificate: false,
            use_identity_as_username: false,
        }
    }
}

impl ListenerConfig {
    /// A plain MQTT listener on `bind` (what `listen` means).
    pub fn mqtt(bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            bind,
            ..ListenerConfig::default()
        }
    }

    fn validate(&self, index: usize) -> Result<(), String> {
        let name = format!("listener {} ({})", index + 1, self.bind);
        let websocket = matches!(self.protocol, ListenerProtocol::Ws | ListenerProtocol::Wss);
        if websocket && !self.path.starts_with('/') {
            return Err(format!(
                "{name}: path {:?} must start with '/' (the default is {DEFAULT_WS_PATH})",
                self.path
            ));
        }
        if !websocket && self.path != DEFAULT_WS_PATH {
            return Err(format!("{name}: path needs protocol = \"ws\" or \"wss\""));
        }
        match self.protocol {
            ListenerProtocol::Mqtt | ListenerProtocol::Ws => {
                let tls_keys = self.cafile.is_some()
                    || self.certfile.is_some()
                    || self.keyfile.is_some()
                    || self.require_certificate
                    || self.use_identity_as_username;
                if tls_keys {
                    return Err(format!(
                        "{name}: cafile, certfile, keyfile, require_certificate and \
                         use_identity_as_username need protocol = \"mqtt+tls\" or \"wss\""
                    ));
                }
            }
            ListenerProtocol::MqttTls | ListenerProtocol::Wss => {
                if self.certfile.is_none() || self.keyfile.is_none() {
                    return Err(format!(
                        "{name}: protocol \"mqtt+tls\" or \"wss\" needs certfile and keyfile (PEM)"
                    ));
                }
                if self.require_certificate && self.cafile.is_none() {
                    return Err(format!(
                        "{name}: require_certificate needs cafile (the CAs client certificates \
                         chain to)"
                    ));
                }
                if self.use_identity_as_username && !self.require_certificate {
                    return Err(format!(
                        "{name}: use_identity_as_username needs require_certificate = true"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How much the broker logs (`--log-level`, `log_level`): each level includes those above it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    /// Startup, connects and disconnects (rate-limited per shard), refusals.
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Whether what clients were acknowledged is written to disk (`persist/`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum PersistenceMode {
    /// Nothing is written; a restart starts empty (the benchmarks' setting).
    #[default]
    #[serde(rename = "off")]
    Off,
    #[serde(rename = "on")]
    On,
}

/// When a record is made durable (`persist/`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum PersistenceSync {
    /// The ack that depends on a record goes out once the record is on disk: one write and
    /// one fdatasync per loop turn for every record of that turn (group commit).
    #[default]
    #[serde(rename = "ack")]
    Ack,
    /// Acks go out at once; the records of a turn are written at its end and made durable at
    /// most `sync_interval_ms` later: a crash of the machine loses at most that window.
    #[serde(rename = "interval")]
    Interval,
}

/// `[persistence]`: one append-only log per shard in `dir`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Persistence {
    pub mode: PersistenceMode,
    /// Where the logs live (created if missing); needed with `mode = "on"`.
    pub dir: Option<PathBuf>,
    pub sync: PersistenceSync,
    /// With `sync = "interval"`: longest time a written record waits for its fdatasync.
    pub sync_interval_ms: u32,
    /// A shard's log is compacted while running once it is larger than this and than twice
    /// its size after the last compaction (or the start).
    pub compact_min_bytes: u64,
}

impl Default for Persistence {
    fn default() -> Persistence {
        Persistence {
            mode: PersistenceMode::Off,
            dir: None,
            sync: PersistenceSync::Ack,
            sync_interval_ms: 100,
            compact_min_bytes: 64 << 20,
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<LogLevel, String> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(format!(
                    "log level {text:?}: expected error, warn, info, debug or trace"
                ))
            }
        })
    }
}

impl Persistence {
    /// The directory, when persistence is on.
    pub fn dir(&self) -> Option<&Path> {
        match self.mode {
            PersistenceMode::Off => None,
            PersistenceMode::On => self.dir.as_deref(),
        }
    }
}

/// The request path a WebSocket listener answers on unless its `path` says otherwise.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// Where the broker listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:1883";

/// Listeners at most (a connection keeps its listener's index in a byte).
pub const LISTENERS_MAX: usize = 64;

/// Every queue, buffer and window has a named bound here.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest packet accepted, checked from the fixed header before the body is buffered.
    pub packet_size_max: u32,
    /// Connections the whole broker holds at once; over it a CONNECT gets "server unavailable".
    pub connections_max: u32,
    /// QoS 1/2 messages in flight to one client before further ones wait in its session queue.
    pub inflight_max: u16,
    /// Messages queued for one session (offline, or waiting for the in-flight window); over it
    /// new messages are dropped and counted.
    pub offline_queue_max: u32,
    /// Bytes waiting to be sent to one connection; over it the broker stops reading from the
    /// connection (TCP back-pressure: a client flooding requests it never reads the answers to
    /// blocks in its own send), QoS 0 messages for it are dropped (counted) and QoS 1/2 wait in
    /// the session queue, until half of it is sent.
    pub outbox_bytes_max: u32,
    /// Seconds a connection may stay over `outbox_bytes_max` without the kernel taking a byte of
    /// its outbox (the client reads nothing) before it is disconnected. 0 = never.
    pub outbox_stall_secs: u16,
    /// Keepalive granted at most (seconds). 0 = whatever the client asks. A 3.1.1 client asking
    /// for more (or for none) is held to this: silent for 1.5 × this, it is disconnected.
    pub keepalive_max_secs: u16,
    /// Highest QoS granted on SUBSCRIBE.
    pub qos_max: u8,
    /// Messages taken from one inbound mesh ring per loop turn.
    pub mesh_batch_max: u32,
    /// Messages one shard-to-shard ring holds (rounded up to a power of two). The mesh takes
    /// shards x (shards - 1) x this x 128 B once every slot has been used (16 shards at 1024:
    /// 31 MB). 0 (the default): [`Limits::mesh_ring_capacity_for`] picks it from the shard
    /// count, so a shard's inbound rings hold about 4,096 messages in all.
    pub mesh_ring_capacity: u32,
    /// Messages waiting for one full shard-to-shard ring; over it QoS 0 publishes for that
    /// shard are dropped (counted), while QoS 1/2, interest, retained and hand-offs still wait
    /// (a client whose QoS 0 retained PUBLISH finds it over stops being read until every
    /// target is back under half of it).
    pub mesh_overflow_max: u32,
    /// Seconds a new connection may take to send its CONNECT before it is closed, counted
    /// from the accept (bytes trickling in do not extend it).
    pub connect_timeout_secs: u16,
    /// Largest CONNECT accepted (bytes, capped by `packet_size_max`), checked from its fixed
    /// header: before a client is known, this is all it can make the broker buffer. Over it
    /// the connection is closed without a CONNACK (3.1.1 has no code for it). Room for a
    /// token-sized password and a small will; raise it for big wills.
    pub connect_packet_size_max: u32,
    /// Inbound QoS 1/2 messages one client may leave unacknowledged at once: QoS 2 ones until
    /// their PUBREL, and those whose PUBACK/PUBREC the broker holds while another shard takes
    /// what they sent it (past `mesh_overflow_max`). MQTT 3.1.1 has no way to say "too many"
    /// (5.0's Receive Maximum will advertise this), so a client past it is disconnected
    /// (counted). Clients keep a small window (mosquitto 20, rumqttc 100), well under it.
    pub incoming_inflight_max: u16,
    /// Filters one client may hold; past it a SUBSCRIBE gets 0x80 (failure) for each new
    /// filter (counted), while filters it already holds are still replaced.
    pub subscriptions_per_client_max: u32,
    /// Retained messages the broker keeps (every shard holds a replica). Past it a retained
    /// PUBLISH to a topic with none is delivered but not retained (counted); replacing or
    /// deleting an existing one still works. Decided by the publisher's shard, which replicates
    /// only what it accepted, so every shard holds the same set; shards deciding at the same
    /// moment may together overshoot by the new topics in flight between them.
    pub retained_max: u32,
    /// Bytes (topic + payload) of retained messages the broker keeps, as `retained_max`.
    pub retained_bytes_max: u64,
    /// Persistent sessions (clean session 0) the whole broker holds, connected or not. A
    /// CONNECT that would create one more is refused with "server unavailable" (3); resuming
    /// an existing session always works.
    pub sessions_max: u32,
    /// A persistent session whose client stayed away this long is removed with its
    /// subscriptions and queued messages (MQTT 3.1.1 sessions never end on their own; MQTT 5
    /// clients will say how long). 0 = never, as mosquitto's default. The default, a week,
    /// outlasts a weekend or a holiday away, while a client that never comes back stops
    /// holding memory and a place under `sessions_max`.
    pub persistent_session_expiry_secs: u32,
    /// MQTT 5 topic aliases per connection, each way (as mosquitto's `max_topic_alias`): the
    /// Topic Alias Maximum the CONNACK gives (a client over it is disconnected with 0x94), and
    /// at most this many the broker assigns for the topics it sends a client that allows
    /// aliases. A connection holds the topics its aliases name. 0 = none.
    pub topic_alias_max: u16,
}

/// Messages a shard's inbound rings hold in all when `mesh_ring_capacity` is 0.
const MESH_INBOUND_SLOTS: usize = 4096;

impl Limits {
    /// The capacity of each shard-to-shard ring with `shards` shards: `mesh_ring_capacity` if
    /// set, else 4,096 / (shards - 1) rounded down to a power of two, between 64 and 1,024
    /// (1,024 up to 5 shards, 512 at 8, 256 at 16, 64 from 34). Every ring slot is touched
    /// once messages have gone round it (hand-offs of connecting clients do that), so the
    /// mesh's memory is what the slots add up to: with a fixed 1,024, 31 MB at 16 shards and
    /// 528 MB at 64, against 7.9 MB and 33 MB so. Each ring still holds a full
    /// `mesh_batch_max` batch up to 16 shards; a busier pair waits in the overflow queue.
    pub fn mesh_ring_capacity_for(&self, shards: usize) -> usize {
        if self.mesh_ring_capacity > 0 {
            return self.mesh_ring_capacity as usize;
        }
        power_of_two_share(MESH_INBOUND_SLOTS, shards.saturating_sub(1)).clamp(64, 1024)
    }
}

/// `total / parts` (parts at least 1), rounded down to a power of two, at least 1: a budget
/// split into power-of-two rings.
fn power_of_two_share(total: usize, parts: usize) -> usize {
    let share = (total / parts.max(1)).max(1);
    1 << share.ilog2()
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            packet_size_max: 1 << 20,
            connections_max: 1_000_000,
            inflight_max: 64,
            offline_queue_max: 10_000,
            outbox_bytes_max: 4 << 20,
            outbox_stall_secs: 30,
            keepalive_max_secs: 0,
            qos_max: 2,
            mesh_batch_max: 256,
            mesh_ring_capacity: 0,
            mesh_overflow_max: 65_536,
            connect_timeout_secs: 10,
            connect_packet_size_max: 8 << 10,
            incoming_inflight_max: 1024,
            subscriptions_per_client_max: 100_000,
            retained_max: 1_000_000,
            retained_bytes_max: 1 << 30,
            sessions_max: 1_000_000,
            persistent_session_expiry_secs: 7 * 24 * 3600,
            topic_alias_max: 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address every shard listens on (SO_REUSEPORT) with plain MQTT: the quick form of one
    /// `[[listener]]`. Port 0 picks an ephemeral port. Unset: `0.0.0.0:1883`, unless
    /// `[[listener]]` sections say where to listen.
    pub listen: Option<SocketAddr>,
    /// `[[listener]]` sections, each listened on by every shard.
    pub listener: Vec<ListenerConfig>,
    /// Shard threads; 0 = one per CPU available to the process.
    pub shards: usize,
    /// io_uring rings (each with its own fixed-file table) per shard.
    pub rings_per_shard: usize,
    /// Fixed-file slots (connections) per ring; 0 = the open-file limit minus a headroom of
    /// 64 for the process's own descriptors.
    pub ring_files_max: u32,
    /// Submission queue entries per ring (the completion queue gets four times as many).
    pub ring_entries: u32,
    /// Provided receive buffers per shard (a power of two, at most 32768), split over its rings
    /// (`recv_buffers_per_ring`): they cover the receives of one loop turn of the shard, not the
    /// number of connections. The kernel hands them out in ring order, so every buffer it is
    /// given is soon touched and stays resident: a ring starts with 64 in circulation and
    /// doubles them each time a turn runs out (ENOBUFS), up to its share of this count (512 x
    /// 4 KiB is 2 MiB per shard; 4096 per ring measured 1,007 B per idle connection at
    /// 100,000, bench/idle.sh, with no throughput difference measured).
    pub recv_buffer_count: u16,
    /// Bytes per provided receive buffer.
    pub recv_buffer_size: u32,
    /// SO_SNDBUF for every connection (set on the listener, which accepted sockets inherit);
    /// 0 = the kernel's autotuning, which on loopback grows to megabytes. A small value makes
    /// `limits.outbox_bytes_max` bite sooner for a consumer that does not read, since the
    /// kernel's own queue sits in front of the outbox.
    pub socket_send_buffer_bytes: u32,
    /// The scheduler time slice each shard thread asks the kernel for, in microseconds
    /// (`sched_setattr`'s `sched_runtime` for a normal thread, Linux 6.12 and later; 100 to
    /// 100,000, or 0 to leave the kernel's: 1.4 ms on the 2-core VM). A shard sleeps in
    /// the kernel until a packet arrives; with a short slice it preempts whatever else runs on
    /// its core at once instead of waiting for that task's slice to end (EEVDF lets a
    /// shorter-slice task preempt on wake-up). It buys no CPU share. Measured: a client
    /// publishing right after another client's SUBSCRIBE on another shard, without waiting for
    /// its SUBACK, was missed 11-12 times in 20 on the 2-core VM with the kernel's slice, once
    /// with 100 µs (the subscriber's shard shared its core with the client process).
    pub sched_slice_us: u32,
    /// A mosquitto_passwd file (`$7$` PBKDF2-SHA512 or `$6$` SHA-512 crypt entries).
    pub password_file: Option<PathBuf>,
    /// A mosquitto-format ACL file (`user`, `topic`, `pattern` lines, `acl.rs`): with one,
    /// what it does not grant is denied. Reloaded with the password file on SIGHUP.
    pub acl_file: Option<PathBuf>,
    /// Let clients connect without a username when no password matches is required.
    pub allow_anonymous: bool,
    /// Seconds between two publications of the `$SYS/broker/...` topics (retained, by shard
    /// 0, as mosquitto's `sys_interval`); 0 = none.
    pub sys_interval_secs: u32,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP, one small thread off the
    /// shards); none by default. Port 0 picks a free port (`Broker::metrics_addr`).
    pub metrics_listen: Option<SocketAddr>,
    /// error, warn, info (the default: connects and disconnects too), debug or trace.
    pub log_level: LogLevel,
    pub limits: Limits,
    pub persistence: Persistence,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: None,
            listener: Vec::new(),
            shards: 0,
            rings_per_shard: 1,
            ring_files_max: 0,
            ring_entries: 4096,
            recv_buffer_count: 512,
            recv_buffer_size: 4096,
            socket_send_buffer_bytes: 0,
            sched_slice_us: 100,
            password_file: None,
            acl_file: None,
            allow_anonymous: true,
            sys_interval_secs: 10,
            metrics_listen: None,
            log_level: LogLevel::Info,
            limits: Limits::default(),
            persistence: Persistence::default(),
        }
    }
}

impl Config {
    /// Reads a TOML file; a parse error names the file, the key and the problem.
    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// The listeners every shard opens, in order: `listen` (plain MQTT; `0.0.0.0:1883` when
    /// neither it nor a `[[listener]]` is given), then the `[[listener]]` sections.
    pub fn listeners(&self) -> Vec<ListenerConfig> {
        let mut listeners = Vec::with_capacity(self.listener.len() + 1);
        match self.listen {
            Some(listen) => listeners.push(ListenerConfig::mqtt(listen)),
            None if self.listener.is_empty() => listeners.push(ListenerConfig::mqtt(
                DEFAULT_LISTEN.parse().expect("valid default address"),
            )),
            None => {}
        }
        listeners.extend(self.listener.iter().cloned());
        listeners
    }

    /// Provided receive buffers in each ring's pool: the shard's `recv_buffer_count` split
    /// evenly over its rings, rounded down to a power of two, but never under 64 (or the whole
    /// count, if smaller). A shard with several rings (for more connections than one
    /// fixed-file table holds) turns no faster, so its rings together need no more buffers
    /// than one ring would: 8 shards x 7 rings of 512 held 112 MiB resident, 107 B of each of
    /// a million idle connections' 561 B (bench/bigbox.sh on 16 cores); 64 each hold 14 MiB.
    pub fn recv_buffers_per_ring(&self) -> u16 {
        let count = usize::from(self.recv_buffer_count.max(1));
        power_of_two_share(count, self.rings_per_shard).max(count.min(64)) as u16
    }

    /// Checks values that parse but make no sense; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        let listeners = self.listeners();
        if listeners.len() > LISTENERS_MAX {
            return Err(format!(
                "{} listeners: at most {LISTENERS_MAX}",
                listeners.len()
            ));
        }
        for (index, listener) in self.listener.iter().enumerate() {
            listener.validate(index)?;
        }
        let p = &self.persistence;
        if p.mode == PersistenceMode::On && p.dir.is_none() {
            return Err(
                "persistence.mode = \"on\" needs persistence.dir (or --persistence-dir DIR)"
                    .to_string(),
            );
        }
        if p.sync == PersistenceSync::Interval && p.sync_interval_ms == 0 {
            return Err("persistence.sync_interval_ms must be at least 1".to_string());
        }
        let l = &self.limits;
        if l.packet_size_max < 16 || l.packet_size_max > 268_435_460 {
            return Err(format!(
                "limits.packet_size_max = {}: must be between 16 and 268435460 (the MQTT maximum)",
                l.packet_size_max
            ));
        }
        if l.outbox_bytes_max < 1024 {
            return Err(format!(
                "limits.outbox_bytes_max = {}: must be at least 1024 (one packet must fit)",
                l.outbox_bytes_max
            ));
        }
        if l.connect_packet_size_max < 128 || l.connect_packet_size_max > 268_435_460 {
            return Err(format!(
                "limits.connect_packet_size_max = {}: must be between 128 and 268435460",
                l.connect_packet_size_max
            ));
        }
        if l.inflight_max == 0 {
            return Err("limits.inflight_max = 0: must be at least 1".into());
        }
        if l.qos_max > 2 {
            return Err(format!("limits.qos_max = {}: must be 0, 1 or 2", l.qos_max));
        }
        if l.connections_max == 0 {
            return Err("limits.connections_max = 0: must be at least 1".into());
        }
        if l.incoming_inflight_max == 0 {
            return Err("limits.incoming_inflight_max = 0: must be at least 1".into());
        }
        if l.subscriptions_per_client_max == 0 {
            return Err("limits.subscriptions_per_client_max = 0: must be at least 1".into());
        }
        if l.mesh_batch_max == 0 {
            return Err("limits.mesh_batch_max = 0: must be at least 1".into());
        }
        if l.mesh_ring_capacity > 1 << 20 {
            return Err(format!(
                "limits.mesh_ring_capacity = {}: must be at most 1048576 (0 = from the shard count)",
                l.mesh_ring_capacity
            ));
        }
        if self.shards > crate::mesh::SHARDS_MAX {
            return Err(format!(
                "shards = {}: must be at most {} (0 = one per CPU)",
                self.shards,
                crate::mesh::SHARDS_MAX
            ));
        }
        if self.rings_per_shard == 0 || self.rings_per_shard > 256 {
            return Err(format!(
                "rings_per_shard = {}: must be between 1 and 256",
                self.rings_per_shard
            ));
        }
        if u64::from(self.ring_files_max) > crate::ring::FIXED_FILES_MAX {
            return Err(format!(
                "ring_files_max = {}: must be at most 1048576 (the kernel's limit of fixed \
                 files per ring, IORING_MAX_FIXED_FILES); more connections take more \
                 rings_per_shard",
                self.ring_files_max
            ));
        }
        if self.sched_slice_us != 0 && !(100..=100_000).contains(&self.sched_slice_us) {
            return Err(format!(
                "sched_slice_us = {}: must be 0 (the kernel's) or between 100 and 100000 (the \
                 kernel's bounds)",
                self.sched_slice_us
            ));
        }
        if !self.recv_buffer_count.is_power_of_two() || self.recv_buffer_count > 32768 {
            return Err(format!(
                "recv_buffer_count = {}: must be a power of two, at most 32768",
                self.recv_buffer_count
            ));
        }
        if self.recv_buffer_size < 64 {
            return Err(format!(
                "recv_buffer_size = {}: must be at least 64 bytes",
                self.recv_buffer_size
            ));
        }
        if self.ring_entries < 8 || self.ring_entries > 32768 {
            return Err(format!(
                "ring_entries = {}: must be between 8 and 32768",
                self.ring_entries
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::from_toml(""), Ok(Config::default()));
    }

    #[test]
    fn receive_buffers_are_split_over_a_shards_rings() {
        let per_ring = |count: u16, rings: usize| {
            Config {
                recv_buffer_count: count,
                rings_per_shard: rings,
                ..Config::default()
            }
            .recv_buffers_per_ring()
        };
        assert_eq!(per_ring(512, 1), 512);
        assert_eq!(per_ring(512, 2), 256);
        assert_eq!(per_ring(512, 3), 128, "170 rounded down to a power of two");
        assert_eq!(per_ring(512, 7), 64);
        assert_eq!(per_ring(512, 100), 64, "never under 64");
        assert_eq!(per_ring(32, 4), 32, "nor above a count already under 64");
        assert_eq!(per_ring(2, 1), 2);
        assert_eq!(per_ring(32768, 1), 32768);
    }

    #[test]
    fn mesh_rings_shrink_as_shards_grow_unless_set() {
        let auto = Limits::default();
        let capacities: Vec<usize> = [1, 2, 4, 5, 6, 8, 9, 16, 17, 32, 33, 64]
            .iter()
            .map(|&shards| auto.mesh_ring_capacity_for(shards))
            .collect();
        assert_eq!(
            capacities,
            [1024, 1024, 1024, 1024, 512, 512, 512, 256, 256, 128, 128, 64]
        );
        for shards in 2..=64 {
            let inbound = (shards - 1) * auto.mesh_ring_capacity_for(shards);
            assert!(
                (1024..=4096).contains(&inbound) || shards > 16,
                "{shards} shards: {inbound} inbound slots"
            );
        }
        let set = Limits {
            mesh_ring_capacity: 100,
            ..Limits::default()
        };
        assert_eq!(
            set.mesh_ring_capacity_for(16),
            100,
            "as set (Mesh rounds it up)"
        );
    }

    #[test]
    fn every_key_is_read() {
        let config = Config::from_toml(
            r#"
            listen = "127.0.0.1:1884"
            shards = 1
            rings_per_shard = 2
            ring_files_max = 1000
            ring_entries = 256
            recv_buffer_count = 512
            recv_buffer_size = 2048
            socket_send_buffer_bytes = 65536
            sched_slice_us = 250
            allow_anonymous = false
            password_file = "/etc/ringmq/passwd"
            acl_file = "/etc/ringmq/acl"
            [limits]
            packet_size_max = 4096
            inflight_max = 10
            keepalive_max_secs = 60
            connect_timeout_secs = 5
            outbox_bytes_max = 65536
            outbox_stall_secs = 3
            connect_packet_size_max = 16384
            mesh_ring_capacity = 128
            mesh_overflow_max = 1000
            incoming_inflight_max = 20
            subscriptions_per_client_max = 50
            retained_max = 7
            retained_bytes_max = 4096
            sessions_max = 9
            persistent_session_expiry_secs = 3600
            "#,
        )
        .expect("valid");
        assert_eq!(config.listen, Some("127.0.0.1:1884".parse().unwrap()));
        assert_eq!((config.rings_per_shard, config.ring_files_max), (2, 1000));
        assert_eq!((config.ring_entries, config.recv_buffer_count), (256, 512));
        assert_eq!(config.recv_buffer_size, 2048);
        assert_eq!(config.socket_send_buffer_bytes, 65536);
        assert_eq!(config.sched_slice_us, 250);
        assert!(!config.allow_anonymous);
        assert_eq!(config.acl_file, Some(PathBuf::from("/etc/ringmq/acl")));
        assert_eq!(config.limits.packet_size_max, 4096);
        assert_eq!(config.limits.inflight_max, 10);
        assert_eq!(config.limits.keepalive_max_secs, 60);
        assert_eq!(config.limits.connect_timeout_secs, 5);
        assert_eq!(config.limits.outbox_bytes_max, 65536);
        assert_eq!(config.limits.outbox_stall_secs, 3);
        assert_eq!(config.limits.connect_packet_size_max, 16384);
        assert_eq!(config.limits.mesh_ring_capacity, 128);
        assert_eq!(config.limits.mesh_overflow_max, 1000);
        assert_eq!(config.limits.incoming_inflight_max, 20);
        assert_eq!(config.limits.subscriptions_per_client_max, 50);
        assert_eq!(config.limits.retained_max, 7);
        assert_eq!(config.limits.retained_bytes_max, 4096);
        assert_eq!(config.limits.sessions_max, 9);
        assert_eq!(config.limits.persistent_session_expiry_secs, 3600);
        assert_eq!(config.limits.qos_max, 2, "unset keys keep their defaults");
    }

    #[test]
    fn listen_is_the_quick_form_of_one_plain_listener() {
        let default = Config::default().listeners();
        assert_eq!(
            default,
            vec![ListenerConfig::mqtt(DEFAULT_LISTEN.parse().unwrap())]
        );
        let tls = r#"
            [[listener]]
            bind = "0.0.0.0:8883"
            protocol = "mqtt+tls"
            certfile = "server.pem"
            keyfile = "server.key"
            cafile = "ca.pem"
            require_certificate = true
            use_identity_as_username = true
            connections_max = 100
        "#;
        let config = Config::from_toml(tls).expect("valid");
        let listeners = config.listeners();
        assert_eq!(
            listeners.len(),
            1,
            "[[listener]] alone replaces the default"
        );
        assert_eq!(listeners[0].protocol, ListenerProtocol::MqttTls);
        assert_eq!(listeners[0].connections_max, 100);
        assert!(listeners[0].use_identity_as_username);
        let both = Config::from_toml(&format!("listen = \"127.0.0.1:1883\"\n{tls}")).unwrap();
        let listeners = both.listeners();
        assert_eq!(listeners.len(), 2);
        assert_eq!(
            listeners[0],
            ListenerConfig::mqtt("127.0.0.1:1883".parse().unwrap())
        );
        assert_eq!(listeners[1].bind, "0.0.0.0:8883".parse().unwrap());
    }

    #[test]
    fn websocket_listeners_and_mosquitto_names() {
        let text = r#"
            [[listener]]
            bind = "127.0.0.1:8080"
            protocol = "ws"
            max_connections = 7
            allow_anonymous = false

            [[listener]]
            bind = "127.0.0.1:8081"
            protocol = "wss"
            path = "/"
            certfile = "server.pem"
            keyfile = "server.key"
        "#;
        let listeners = Config::from_toml(text).expect("valid").listeners();
        assert_eq!(listeners[0].protocol, ListenerProtocol::Ws);
        assert_eq!(listeners[0].path, "/mqtt");
        assert_eq!(listeners[0].connections_max, 7);
        assert_eq!(listeners[0].allow_anonymous, Some(false));
        assert_eq!(listeners[1].protocol, ListenerProtocol::Wss);
        assert_eq!(listeners[1].path, "/");
        assert_eq!(listeners[1].allow_anonymous, None);
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("rings_per_shard = 0", "rings_per_shard"),
            ("rings_per_shard = 257", "rings_per_shard"),
            ("recv_buffer_count = 1000", "recv_buffer_count"),
            ("recv_buffer_size = 16", "recv_buffer_size"),
            ("ring_entries = 4", "ring_entries"),
            ("ring_files_max = 1048577", "ring_files_max"),
            ("sched_slice_us = 99", "sched_slice_us"),
            ("sched_slice_us = 100001", "sched_slice_us"),
            ("[limits]\ninflight_max = 0", "inflight_max"),
            ("[limits]\nqos_max = 3", "qos_max"),
            ("[limits]\noutbox_bytes_max = 100", "outbox_bytes_max"),
            (
                "[limits]\nconnect_packet_size_max = 64",
                "connect_packet_size_max",
            ),
            (
                "[limits]\nmesh_ring_capacity = 2000000",
                "mesh_ring_capacity",
            ),
            (
                "[limits]\nincoming_inflight_max = 0",
                "incoming_inflight_max",
            ),
            (
                "[limits]\nsubscriptions_per_client_max = 0",
                "subscriptions_per_client_max",
            ),
            ("shards = 65", "shards"),
            (
                "[[listener]]\nbind = \"127.0.0.1:8883\"\nprotocol = \"mqtt+tls\"",
                "certfile and keyfile",
            ),
            (
                "[[listener]]\nbind = \"127.0.0.1:8883\"\ncertfile = \"a.pem\"",
                "mqtt+tls",
            ),
            (
                "[[listener]]\nprotocol = \"mqtt+tls\"\ncertfile = \"a\"\nkeyfile = \"b\"\n\
                 require_certificate = true",
                "cafile",
            ),
            (
                "[[listener]]\nprotocol = \"mqtt+tls\"\ncertfile = \"a\"\nkeyfile = \"b\"\n\
                 use_identity_as_username = true",
                "require_certificate",
            ),
            ("[[listener]]\nprotocol = \"wss\"", "certfile and keyfile"),
            ("[[listener]]\nprotocol = \"ws\"\npath = \"mqtt\"", "path"),
            ("[[listener]]\npath = \"/ws\"", "path needs"),
            (
                "[[listener]]\nprotocol = \"ws\"\nmax_connections = 1\nconnections_max = 2",
                "duplicate",
            ),
            ("[[listener]]\nprotocol = \"quic\"", "quic"),
            ("[[listener]]\nport = 1883", "port"),
            ("no_such_key = 1", "no_such_key"),
        ];
        for (text, key) in cases {
            let error = Config::from_toml(text).expect_err(text);
            assert!(error.contains(key), "{text}: {error}");
        }
    }
}
