//! The `$SYS/broker/...` topics, with mosquitto's names, published retained by shard 0 every
//! `sys_interval_secs` through the ordinary publish path, so the retained store of every shard
//! holds them and subscribers on any shard get them. Each shard's own counters
//! (`$SYS/broker/shards/N/...`) go out live, not retained: see [`PER_SHARD`]. Shard 0 reads every shard's slot of the
//! `StatsBoard` (each shard wrote its own at its last tick, at most a second ago) and sums
//! them: no shard waits on another, and the hot path keeps plain integers.
//!
//! Spec 4.7.2: `$SYS/` is the server's; a client's PUBLISH (or will) to a `$SYS` topic is
//! dropped and counted (`dropped_sys_publish`), as mosquitto does.

use bytes::Bytes;
use bytestring::ByteString;

use super::body::Body;
use super::stats::{self, ShardStats, STATS};
use super::Shard;
use crate::protocol::QoS;

/// The prefix of every shard's own counters. They are published live to whoever subscribes,
/// not retained: a retained message is replicated to every shard, and every shard's ~50
/// counters on every shard are shards² replicas rewritten each interval (32 shards: 1,600
/// topics in 32 copies, 50,000 mesh messages every 10 s: 100,000 idle connections cost 770 B
/// each on 32 x 1 with them retained, 510 B without). The broker-wide sums stay retained, as
/// mosquitto's.
pub const PER_SHARD: &str = "$SYS/broker/shards/";

/// True for a topic name a client may not publish to.
pub fn is_sys_topic(topic: &str) -> bool {
    topic
        .strip_prefix("$SYS")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Messages per minute averaged over 1, 5 and 15 minutes, decaying exponentially as
/// mosquitto's `load/messages/...` (and Unix load averages) do.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

impl Load {
    /// `count` messages over the last `elapsed_secs`.
    pub fn update(&mut self, count: u64, elapsed_secs: f64) {
        if elapsed_secs <= 0.0 {
            return;
        }
        let per_minute = count as f64 * 60.0 / elapsed_secs;
        for (average, window_secs) in [
            (&mut self.one, 60.0),
            (&mut self.five, 300.0),
            (&mut self.fifteen, 900.0),
        ] {
            let decay = (-elapsed_secs / window_secs).exp();
            *average = per_minute + decay * (*average - per_minute);
        }
    }
}

/// Shard 0's state for `$SYS`.
pub struct SysTree {
    interval_ms: u64,
    next_due_ms: u64,
    /// When the loads were last updated, and the totals then.
    last_ms: u64,
    last_received: u64,
    last_sent: u64,
    load_received: Load,
    load_sent: Load,
    /// The most clients seen connected at once, sampled every tick (a peak shorter than a
    /// tick may be missed; each shard's own high-water mark bounds it from below).
    clients_max: u64,
}

impl SysTree {
    pub fn new(interval_secs: u32) -> SysTree {
        SysTree {
            interval_ms: u64::from(interval_secs) * 1000,
            // The first publication at the first tick, so a subscriber need not wait out a
            // whole interval after the start.
            next_due_ms: 0,
            last_ms: 0,
            last_received: 0,
            last_sent: 0,
            load_received: Load::default(),
            load_sent: Load::default(),
            clients_max: 0,
        }
    }

    /// Samples the totals (every tick); when due, returns the topics and values to publish.
    pub fn sample(
        &mut self,
        now_ms: u64,
        shards: &[ShardStats],
        heap_bytes: u64,
    ) -> Option<Vec<(String, String)>> {
        let total = stats::total(shards);
        self.clients_max = self
            .clients_max
            .max(total.connections)
            .max(total.connections_high_water);
        if now_ms < self.next_due_ms {
            return None;
        }
        self.next_due_ms = now_ms + self.interval_ms;
        let elapsed_secs = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.load_received.update(
            total.messages_in.saturating_sub(self.last_received),
            elapsed_secs,
        );
        self.load_sent.update(
            total.messages_out.saturating_sub(self.last_sent),
            elapsed_secs,
        );
        self.last_ms = now_ms;
        self.last_received = total.messages_in;
        self.last_sent = total.messages_out;
        Some(self.topics(now_ms / 1000, &total, shards, heap_bytes))
    }

    fn topics(
        &self,
        uptime_secs: u64,
        total: &ShardStats,
        shards: &[ShardStats],
        heap_bytes: u64,
    ) -> Vec<(String, String)> {
        let disconnected = total.sessions.saturating_sub(total.connections);
        let mut topics = Vec::new();
        let mut add = |name: &str, value: String| {
            topics.push((format!("$SYS/broker/{name}"), value));
        };
        add(
            "version",
            format!("ringmq version {}", env!("CARGO_PKG_VERSION")),
        );
        add("uptime", format!("{uptime_secs} seconds"));
        add("clients/connected", total.connections.to_string());
        add("clients/disconnected", disconnected.to_string());
        add("clients/maximum", self.clients_max.to_string());
        add(
            "clients/total",
            (total.connections + disconnected).to_string(),
        );
        // mosquitto counts every packet under messages/ and PUBLISHes under publish/messages/;
        // ringmq counts PUBLISHes, under both names.
        add("messages/received", total.messages_in.to_string());
        add("messages/sent", total.messages_out.to_string());
        add("publish/messages/received", total.messages_in.to_string());
        add("publish/messages/sent", total.messages_out.to_string());
        add("publish/messages/dropped", dropped(total).to_string());
        add("bytes/received", total.bytes_received.to_string());
        add("bytes/sent", total.bytes_sent.to_string());
        add("subscriptions/count", total.subscriptions.to_string());
        add(
            "retained messages/count",
            total.retained_messages.to_string(),
        );
        add("heap/current", heap_bytes.to_string());
        for (direction, load) in [("received", self.load_received), ("sent", self.load_sent)] {
            for (window, value) in [
                ("1min", load.one),
                ("5min", load.five),
                ("15min", load.fifteen),
            ] {
                add(
                    &format!("load/messages/{direction}/{window}"),
                    format!("{value:.2}"),
                );
            }
        }
        for (index, shard) in shards.iter().enumerate() {
            for (info, value) in STATS.iter().zip(shard.values()) {
                add(&format!("shards/{index}/{}", info.name), value.to_string());
            }
        }
        topics
    }
}

/// Messages the broker did not deliver, every cause added up (`$SYS/broker/shards/N/dropped_*`
/// and `mesh_dropped_qos0` tell them apart).
pub fn dropped(total: &ShardStats) -> u64 {
    total.dropped_outbox_full
        + total.dropped_queue_full
        + total.dropped_offline_qos0
        + total.dropped_expired
        + total.dropped_packet_too_large
        + total.dropped_no_group_member
        + total.mesh_dropped_qos0
        + total.dropped_sys_publish
}

/// The process's resident memory (`/proc/self/statm`), reported as `heap/current`: mimalloc
/// keeps no running total without its statistics build, and RSS is what an operator watches.
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page_bytes.max(0) as u64
}

impl Shard {
    /// Every tick on shard 0: samples the board, and when `sys_interval_secs` has passed
    /// publishes the `$SYS` topics as the server: retained but for the per-shard ones.
    pub(super) fn publish_sys_tree(&mut self) {
        let Some(mut sys) = self.sys.take() else {
            return;
        };
        let shards = self.board.read_all();
        let heap_bytes = resident_bytes();
        if let Some(topics) = sys.sample(self.now_ms, &shards, heap_bytes) {
            for (topic, value) in topics {
                let retain = !topic.starts_with(PER_SHARD);
                let (topic, value) = (ByteString::from(topic), Bytes::from(value));
                self.publish_as_server(&Body::of(&topic, &value), QoS::AtMostOnce, retain, None);
            }
        }
        self.sys = Some(sys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_topics_are_the_servers() {
        assert!(is_sys_topic("$SYS/broker/uptime"));
        assert!(is_sys_topic("$SYS"));
        assert!(is_sys_topic("$SYS/"));
        assert!(!is_sys_topic("$SYSTEM/x"));
        assert!(!is_sys_topic("sys/x"));
        assert!(!is_sys_topic("a/$SYS/x"));
    }

    #[test]
    fn load_converges_to_the_rate_per_minute() {
        let mut load = Load::default();
        // 100 messages every 10 s: 600 per minute.
        for _ in 0..3000 {
            load.update(100, 10.0);
        }
        assert!((load.one - 600.0).abs() < 0.01, "{load:?}");
        assert!((load.fifteen - 600.0).abs() < 0.01, "{load:?}");
        // One interval of silence: the 1 minute average falls faster than the 15 minute one.
        load.update(0, 10.0);
        assert!(load.one < load.five && load.five < load.fifteen, "{load:?}");
        let mut fresh = Load::default();
        fresh.update(600, 60.0);
        let expected = 600.0 * (1.0 - (-1.0f64).exp());
        assert!((fresh.one - expected).abs() < 1e-9, "{fresh:?}");
    }

    #[test]
    fn topics_sum_shards_and_use_mosquittos_names() {
        let shards = [
            ShardStats {
                connections: 2,
                sessions: 3,
                messages_in: 10,
                messages_out: 20,
                retained_messages: 5,
                subscriptions: 4,
                ..ShardStats::default()
            },
            ShardStats {
                connections: 1,
                sessions: 1,
                messages_in: 1,
                retained_messages: 5,
                dropped_outbox_full: 2,
                mesh_dropped_qos0: 1,
                ..ShardStats::default()
            },
        ];
        let mut sys = SysTree::new(10);
        let topics = sys
            .sample(12_000, &shards, 4096)
            .expect("due at the first tick");
        let value = |name: &str| {
            topics
                .iter()
                .find(|(topic, _)| topic == name)
                .map(|(_, value)| value.as_str())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert_eq!(value("$SYS/broker/uptime"), "12 seconds");
        assert_eq!(value("$SYS/broker/clients/connected"), "3");
        assert_eq!(value("$SYS/broker/clients/disconnected"), "1");
        assert_eq!(value("$SYS/broker/clients/total"), "4");
        assert_eq!(value("$SYS/broker/clients/maximum"), "3");
        assert_eq!(value("$SYS/broker/messages/received"), "11");
        assert_eq!(value("$SYS/broker/messages/sent"), "20");
        assert_eq!(value("$SYS/broker/publish/messages/dropped"), "3");
        assert_eq!(value("$SYS/broker/retained messages/count"), "5");
        assert_eq!(value("$SYS/broker/subscriptions/count"), "4");
        assert_eq!(value("$SYS/broker/heap/current"), "4096");
        // 11 messages in 12 s: 55 a minute, 1 - e^(-12/60) of the way from 0.
        let load = 55.0 * (1.0 - (-12.0f64 / 60.0).exp());
        assert_eq!(
            value("$SYS/broker/load/messages/received/1min"),
            format!("{load:.2}")
        );
        assert_eq!(value("$SYS/broker/shards/1/dropped_outbox_full"), "2");
        assert!(value("$SYS/broker/version").starts_with("ringmq version "));
        assert!(sys.sample(13_000, &shards, 0).is_none(), "not due yet");
        assert!(sys.sample(22_000, &shards, 0).is_some());
    }
}
