//! A shard's log lines about its clients: connect, refused CONNECT and disconnect, and the
//! limits that dropped something (issue 11).
//!
//! Clients cause these lines, so a flood of clients must not turn into a flood of lines (a
//! storm of 15,000 connections, a client reconnecting in a loop): at most
//! `CONN_LINES_PER_SEC` connection lines per shard per second are written, the others only
//! counted, and once the second is over one line says how many were left out. Nothing is
//! formatted for a line whose level is off (one relaxed load) or that is over the rate.
//!
//! Limits: every limit that drops something logs once and counts always. The counters are
//! the shard's `ShardStats`; the timer tick compares them with what was last told and says
//! what grew: the first time at once (or, for the limits whose hit site logs its first
//! occurrence, `Watched::logged_at_hit`, silently), then at most once a minute, with the count
//! and the config key to raise. The data path pays nothing for it: a counter bump, as before.

use std::fmt;
use std::net::{SocketAddr, TcpListener};

use log::Level;

use crate::config::ListenerProtocol;
use crate::listener::Listener;
use crate::protocol::{DecodeError, ProtocolVersion, ReasonCode};

use super::close::CloseReason;
use super::conn::{ring_of, slot_of, ConnState};
use super::problem::reason_string;
use super::{Shard, ShardStats};

/// Connection lines (connect, refusal, disconnect) one shard writes per second at most.
pub(super) const CONN_LINES_PER_SEC: u32 = 100;
/// A limit that keeps dropping is told again at most this often.
const LIMIT_LOG_INTERVAL_MS: u64 = 60_000;
/// Characters of a client id or username a line shows.
const NAME_CHARS_MAX: usize = 128;

/// Lines per one-second window, and those left out.
pub(super) struct ConnLines {
    window_start_ms: u64,
    lines: u32,
    suppressed: u64,
    /// "127.0.0.1:1883 (mqtt)" per listener, in `listeners` order.
    listener_names: Vec<String>,
    /// Per listener: it is IPv6, so its clients' addresses are too (`Ring::peer_addr`).
    listener_ipv6: Vec<bool>,
}

impl ConnLines {
    pub(super) fn new(sockets: &[TcpListener], listeners: &[Listener]) -> ConnLines {
        let listener_ipv6 = sockets
            .iter()
            .zip(listeners)
            .map(|(socket, listener)| {
                socket
                    .local_addr()
                    .unwrap_or(listener.config.bind)
                    .is_ipv6()
            })
            .collect();
        let listener_names = sockets
            .iter()
            .zip(listeners)
            .map(|(socket, listener)| {
                let addr = socket.local_addr().unwrap_or(listener.config.bind);
                let protocol = match listener.config.protocol {
                    ListenerProtocol::Mqtt => "mqtt",
                    ListenerProtocol::MqttTls => "mqtt+tls",
                    ListenerProtocol::Ws => "ws",
                    ListenerProtocol::Wss => "wss",
                };
                format!("{addr} ({protocol})")
            })
            .collect();
        ConnLines {
            window_start_ms: 0,
            lines: 0,
            suppressed: 0,
            listener_names,
            listener_ipv6,
        }
    }

    /// Whether a line may be written at `now_ms`; one that may not is counted.
    fn allow(&mut self, now_ms: u64) -> bool {
        self.roll(now_ms);
        if self.lines < CONN_LINES_PER_SEC {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// A window is over: says how many lines it left out, and starts the next.
    fn roll(&mut self, now_ms: u64) {
        if now_ms < self.window_start_ms + 1000 {
            return;
        }
        if self.suppressed > 0 {
            log::info!(
                "{} connection lines suppressed (at most {CONN_LINES_PER_SEC} a second per \
                 shard)",
                self.suppressed
            );
            self.suppressed = 0;
        }
        self.window_start_ms = now_ms;
        self.lines = 0;
    }
}

/// A limit's counter, and what to tell about it.
struct Watched {
    count: fn(&ShardStats) -> u64,
    counter: &'static str,
    key: &'static str,
    what: &'static str,
    /// The hit site logs the first hit itself (with details only it knows): the watch only
    /// tells the counts that follow.
    logged_at_hit: bool,
}

const WATCHED: [Watched; 14] = [
    Watched {
        count: |s| s.dropped_outbox_full,
        counter: "dropped_outbox_full",
        key: "limits.outbox_bytes_max",
        what: "QoS 0 messages dropped: their subscriber's outbox was full",
        logged_at_hit: false,
    },
    Watched {
        count: |s| s.recv_paused_count,
        counter: "recv_paused_count",
        key: "limits.outbox_bytes_max",
        what: "reads paused: the connection's outbox was full",
        logged_at_hit: true,
    },
    Watched {
        count: |s| s.mesh_paused_count,
        counter: "mesh_paused_count",
        key: "limits.mesh_overflow_max",
        what: "reads paused: QoS 0 retained messages outpaced another shard",
        logged_at_hit: true,
    },
    Watched {
        count: |s| s.outbox_stall_disconnects,
        counter: "outbox_stall_disconnects",
        key: "limits.outbox_stall_secs",
        what: "connections closed: they read nothing with their outbox full",
        logged_at_hit: true,
    },
    Watched {
        count: |s| s.dropped_queue_full,
        counter: "dropped_queue_full",
        key: "limits.offline_queue_max",
        what: "QoS 1/2 messages dropped: their session's queue was full",
        logged_at_hit: false,
    },
    Watched {
        count: |s| s.dropped_packet_too_large,
        counter: "dropped_packet_too_large",
        key: "the client's Maximum Packet Size",
        what: "packets not sent: larger than their MQTT 5 client accepts",
        logged_at_hit: false,
    },
    Watched {
        count: |s| s.table_full_count,
        counter: "table_full_count",
        key: "ring_files_max (or the open-file limit) and rings_per_shard",
        what: "connections closed at accept: every fixed-file slot was taken",
        logged_at_hit: true,
    },
    Watched {
        count: |s| s.listener_full_count,
        counter: "listener_full_count",
        key: "[[listener]] connections_max",
        what: "connections closed at accept: their listener was full",
        logged_at_hit: false,
    },
    Watched {
        count: |s| s.connect_too_large_count,
        counter: "connect_too_large_count",
        key: "limits.connect_packet_size_max",
        what: "connections closed: their CONNECT was too large",
        logged_at_hit: true,
    },
    Watched {
        count: |s| s.mesh_dropped_qos0,
        counter: "mesh_dropped_qos0",
        key: "limits.mesh_overflow_max",
        what: "QoS 0 forwards to another shard dropped: its ring backed up",
        logged_at_hit: true,
    },
    Watched {
        count: |s| s.incoming_inflight_exceeded,
        counter: "incoming_inflight_exceeded",
        key: "limits.incoming_inflight_max",
        what: "clients disconnected: too many QoS 1/2 messages unacknowledged",
        logged_at_hit: true,
    },
    Watched {
        count: |s| s.subscriptions_refused,
        counter: "subscriptions_refused",
        key: "limits.subscriptions_per_client_max",
        what: "filters refused: their client held too many",
        logged_at_hit: true,
    },
    Watched {
        count: |s| s.retained_refused,
        counter: "retained_refused",
        key: "limits.retained_max or limits.retained_bytes_max",
        what: "retained messages not stored",
        logged_at_hit: true,
    },
    Watched {
        count: |s| s.sessions_refused,
        counter: "sessions_refused",
        key: "limits.sessions_max",
        what: "CONNECTs refused: too many persistent sessions",
        logged_at_hit: true,
    },
];

/// What each watched counter was when last told, and when it may be told again.
#[derive(Default)]
pub(super) struct LimitWatch {
    told: [(u64, u64); WATCHED.len()],
}

impl LimitWatch {
    /// From the timer tick: tells the limits whose counters grew.
    fn tick(&mut self, stats: &ShardStats, now_ms: u64) {
        for (watched, (told, next_ms)) in WATCHED.iter().zip(self.told.iter_mut()) {
            let count = (watched.count)(stats);
            if count == *told || now_ms < *next_ms {
                continue;
            }
            let new = count - *told;
            let first = *told == 0;
            *told = count;
            *next_ms = now_ms + LIMIT_LOG_INTERVAL_MS;
            let Watched {
                counter, key, what, ..
            } = watched;
            if first && !watched.logged_at_hit {
                log::warn!(
                    "{key} reached: {new} {what} (counted in {counter}; told again at most once \
                     a minute)"
                );
            } else if !first {
                log::warn!("{key}: {new} more {what} ({count} in all, counted in {counter})");
            }
        }
    }
}

/// A client id or username as a line shows it: quoted, escaped (no line breaks a client could
/// forge lines with), and cut at `NAME_CHARS_MAX` characters.
struct Name<'a>(&'a str);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(NAME_CHARS_MAX) {
            Some((end, _)) => write!(f, "{:?}...", &self.0[..end]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

fn version_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

/// A client's address as a line shows it (`unknown` when the kernel had none to give).
struct Peer(Option<SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => write!(f, "unknown"),
        }
    }
}

/// A reason code as a line shows it: `0x86 bad user name or password` (MQTT 5 numbering; the
/// 3.1.x return code is `connack_code`'s).
struct Code(ReasonCode);

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.0 as u8)?;
        match reason_string(self.0) {
            Some(text) => write!(f, " {text}"),
            None => write!(f, " {:?}", self.0),
        }
    }
}

/// Why a connection ended, as its disconnect line says it.
struct Why {
    reason: CloseReason,
    code: Option<ReasonCode>,
    detail: Option<DecodeError>,
    keepalive_secs: u16,
    stall_secs: u16,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            CloseReason::Disconnect => write!(f, "client DISCONNECT"),
            CloseReason::DisconnectWithWill => {
                write!(f, "client DISCONNECT with a reason that sends the will")
            }
            CloseReason::Io => write!(f, "closed by the client (or the network)"),
            CloseReason::Protocol => {
                write!(f, "protocol error")?;
                if let Some(detail) = self.detail {
                    write!(f, ": {detail}")?;
                }
                match self.code {
                    Some(code) => write!(f, " ({})", Code(code)),
                    None => Ok(()),
                }
            }
            CloseReason::KeepaliveTimeout => write!(
                f,
                "keepalive expired (nothing received for 1.5 x {} s)",
                self.keepalive_secs
            ),
            CloseReason::OutboxStalled => write!(
                f,
                "outbox stalled (read nothing for limits.outbox_stall_secs, {} s)",
                self.stall_secs
            ),
            CloseReason::TakenOver => write!(f, "taken over by a new connection with its id"),
            CloseReason::Refused => write!(f, "refused"),
            CloseReason::ConnectTimeout => {
                write!(f, "no CONNECT within limits.connect_timeout_secs")
            }
            CloseReason::HandOffFailed => write!(f, "the hand-off to its home shard failed"),
            CloseReason::WebSocket => write!(
                f,
                "WebSocket close (a close frame, a broken frame rule or a refused upgrade)"
            ),
        }
    }
}

/// The client id a refusal names: set around the handling of one CONNECT (`on_connect`),
/// only while info lines are on; a buffer reused from one CONNECT to the next.
#[derive(Default)]
pub(super) struct Connecting {
    client_id: String,
    known: bool,
}

impl Connecting {
    pub(super) fn begin(&mut self, client_id: &str) {
        if log::log_enabled!(Level::Info) {
            self.client_id.clear();
            self.client_id.push_str(client_id);
            self.known = true;
        }
    }

    pub(super) fn end(&mut self) {
        self.known = false;
    }
}

impl Shard {
    /// The client address of connection `slot`, for a line about to be written: one syscall
    /// (`Ring::peer_addr`), so the connection keeps no address of its own.
    fn peer(&mut self, slot: u32) -> Peer {
        let listener = self.conns.listener(slot);
        let ipv6 = self.conn_lines.listener_ipv6.get(listener) == Some(&true);
        Peer(self.rings[ring_of(slot)].peer_addr(slot_of(slot), ipv6))
    }

    /// A client connected: one info line, when the rate allows.
    pub(super) fn log_connect(
        &mut self,
        slot: u32,
        generation: u32,
        client_id: &str,
        username: Option<&str>,
        clean_start: bool,
        session_present: bool,
    ) {
        if !log::log_enabled!(Level::Info) || !self.conn_lines.allow(self.now_ms) {
            return;
        }
        let peer = self.peer(slot);
        let Some(conn) = self.conns.get(slot, generation) else {
            return;
        };
        let listener = &self.conn_lines.listener_names[self.conns.listener(slot)];
        let user = username.map(Name);
        let user = user.as_ref().map_or(&"none" as &dyn fmt::Display, |u| u);
        log::info!(
            "connect: client {} (MQTT {}) from {peer}, clean start {}, keepalive {} s, session \
             present {}, username {user}, listener {listener}",
            Name(client_id),
            version_name(conn.version),
            u8::from(clean_start),
            conn.keepalive_secs,
            u8::from(session_present),
        );
    }

    /// A CONNECT on connection `slot` refused with `code` (CONNACK, then close).
    pub(super) fn log_refused(&mut self, slot: u32, version: ProtocolVersion, code: ReasonCode) {
        if !log::log_enabled!(Level::Info) || !self.conn_lines.allow(self.now_ms) {
            return;
        }
        let peer = self.peer(slot);
        let client = if self.connecting.known {
            Name(&self.connecting.client_id).to_string()
        } else {
            "unknown".to_string()
        };
        let return_code = if version.is_v5() {
            String::new()
        } else {
            format!(
                "return code {}, ",
                crate::protocol::connack_return_code(code)
            )
        };
        log::info!(
            "refused CONNECT: client {client} (MQTT {}) from {peer}: {return_code}{}",
            version_name(version),
            Code(code)
        );
    }

    /// A connection starts closing (`close_with`, before its state changes): a connected
    /// client's disconnect line (info), or one that never connected (debug).
    pub(super) fn log_close(
        &mut self,
        slot: u32,
        generation: u32,
        reason: CloseReason,
        code: Option<ReasonCode>,
    ) {
        let detail = self.close_detail.take();
        let Some(conn) = self.conns.get(slot, generation) else {
            return;
        };
        let level = match (conn.state, reason) {
            (ConnState::Connected, _) => Level::Info,
            (ConnState::AwaitConnect, reason) if reason != CloseReason::Refused => Level::Debug,
            _ => return,
        };
        if !log::log_enabled!(level) || !self.conn_lines.allow(self.now_ms) {
            return;
        }
        let peer = self.peer(slot);
        let Some(conn) = self.conns.get(slot, generation) else {
            return;
        };
        let why = Why {
            reason,
            code,
            detail,
            keepalive_secs: conn.keepalive_secs,
            stall_secs: self.config.limits.outbox_stall_secs,
        };
        match self.sessions.get(conn.session) {
            Some(session) if level == Level::Info => log::info!(
                "disconnect: client {} (MQTT {}) from {peer}: {why}",
                Name(&session.client_id),
                version_name(conn.version)
            ),
            _ => log::log!(
                level,
                "connection from {peer} closed before its CONNECT: {why}"
            ),
        }
    }

    /// From the timer tick: the rate window's summary, and the limits that dropped something.
    pub(super) fn log_tick(&mut self) {
        if log::log_enabled!(Level::Info) {
            self.conn_lines.roll(self.now_ms);
        }
        if log::log_enabled!(Level::Warn) {
            self.limit_watch.tick(&self.stats, self.now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_escaped_and_cut() {
        assert_eq!(Name("a\nb").to_string(), "\"a\\nb\"");
        let long = "x".repeat(300);
        let shown = Name(&long).to_string();
        assert_eq!(shown.len(), NAME_CHARS_MAX + 2 + 3, "{shown}");
        assert!(shown.ends_with("\"..."));
    }

    #[test]
    fn lines_past_the_rate_are_counted_until_the_second_is_over() {
        let mut lines = ConnLines {
            window_start_ms: 0,
            lines: 0,
            suppressed: 0,
            listener_names: Vec::new(),
            listener_ipv6: Vec::new(),
        };
        let allowed = (0..CONN_LINES_PER_SEC + 50)
            .filter(|_| lines.allow(500))
            .count();
        assert_eq!(allowed, CONN_LINES_PER_SEC as usize);
        assert_eq!(lines.suppressed, 50);
        assert!(!lines.allow(999));
        assert!(lines.allow(1500), "a new second");
        assert_eq!(lines.suppressed, 0, "told and reset");
    }

    #[test]
    fn a_limit_is_told_once_then_at_most_once_a_minute() {
        let mut watch = LimitWatch::default();
        let mut stats = ShardStats::default();
        watch.tick(&stats, 1000);
        assert_eq!(watch.told[0], (0, 0), "nothing dropped, nothing told");
        stats.dropped_outbox_full = 5;
        watch.tick(&stats, 2000);
        assert_eq!(watch.told[0], (5, 62_000));
        stats.dropped_outbox_full = 9;
        watch.tick(&stats, 30_000);
        assert_eq!(watch.told[0], (5, 62_000), "not again within the minute");
        watch.tick(&stats, 62_000);
        assert_eq!(watch.told[0], (9, 122_000));
    }
}
