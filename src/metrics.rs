//! Prometheus text exposition (format 0.0.4) at `GET /metrics`, on `metrics_listen`.
//!
//! One small thread with a blocking std listener, outside the shards: scrapes come every few
//! seconds from one monitoring system, not from clients, so they need neither io_uring nor a
//! place in a shard's turn, and a slow scraper must never delay a shard. The thread only reads
//! the shards' `StatsBoard` slots (each shard's counters as of its last tick, at most a second
//! old), so serving it puts no lock and no atomic read-modify-write on the shards' hot path.
//! One request per connection, each read and write bounded by a timeout.
//!
//! Every `ShardStats` counter is exposed per shard (label `shard`): a counter as
//! `ringmq_<name>_total`, a level as `ringmq_<name>`. Two histograms per shard:
//! `ringmq_receive_to_send_seconds`, how long messages waited in the shard, from the loop turn
//! that reaped them to their send's submission at its end; `ringmq_mesh_transit_seconds`, how
//! long a PUBLISH forwarded from another shard took from the publisher's shard's turn to its
//! take from the ring here. They cost one clock read per loop turn that wrote messages and
//! one per mesh drain that took some (`stats::ShardLatency`), never one per message, and only
//! while this endpoint is configured.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::shard::stats::{
    latency_bound_ns, Latency, ShardLatency, StatInfo, StatKind, StatsBoard, LATENCY_BUCKETS, STATS,
};
use crate::shard::sys::resident_bytes;
use crate::shard::ShardStats;

/// A scraper has this long to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes of a request read (a request line and a few headers).
const REQUEST_BYTES_MAX: usize = 8 << 10;

/// The metrics thread; stopped (and joined) by `stop` or on drop.
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn start(
        addr: SocketAddr,
        board: Arc<StatsBoard>,
        started: Instant,
    ) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}"))
        })?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ringmq-metrics".to_string())
            .spawn(move || serve(listener, &board, started, &thread_stop))?;
        Ok(MetricsServer {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // Wakes the blocking accept; the thread sees the flag and leaves.
        let _ = TcpStream::connect_timeout(&self.local_addr, IO_TIMEOUT);
        let _ = thread.join();
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: TcpListener, board: &StatsBoard, started: Instant, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        // A failed accept (a reset connection, no descriptors left) ends nothing but itself.
        let Ok(stream) = stream else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = answer(stream, board, started);
    }
}

fn answer(mut stream: TcpStream, board: &StatsBoard, started: Instant) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..read]);
        if request.len() > REQUEST_BYTES_MAX {
            return respond(&mut stream, "431 Request Header Fields Too Large", "");
        }
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let body = render(
                &board.read_all(),
                &board.read_all_latency(),
                started.elapsed().as_secs(),
                resident_bytes(),
            );
            respond(&mut stream, "200 OK", &body)
        }
        (Some(b"GET"), _) => respond(&mut stream, "404 Not Found", "see /metrics\n"),
        _ => respond(&mut stream, "405 Method Not Allowed", ""),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// The Prometheus name of a `ShardStats` counter. A few are renamed to the words operators
/// search for; a `_count` suffix is dropped before a counter's `_total`.
pub fn metric_name(info: &StatInfo) -> String {
    let name = match info.name {
        "messages_in" => "messages_received",
        "messages_out" => "messages_sent",
        name => name,
    };
    match info.kind {
        StatKind::Counter => {
            format!(
                "ringmq_{}_total",
                name.strip_suffix("_count").unwrap_or(name)
            )
        }
        StatKind::Gauge | StatKind::GaugeMax => format!("ringmq_{name}"),
    }
}

/// The histogram of receive-to-send waits (`ShardLatency::receive_to_send`).
pub const LATENCY_METRIC: &str = "ringmq_receive_to_send_seconds";
/// The histogram of forwards' transit between shards (`ShardLatency::mesh_transit`).
pub const MESH_LATENCY_METRIC: &str = "ringmq_mesh_transit_seconds";

/// The exposition page: every counter per shard, the latency histogram per shard, then the
/// process's own gauges.
pub fn render(
    shards: &[ShardStats],
    latencies: &[ShardLatency],
    uptime_secs: u64,
    resident_bytes: u64,
) -> String {
    let mut page = String::with_capacity(256 * STATS.len() + 64 * STATS.len() * shards.len());
    let values: Vec<_> = shards.iter().map(ShardStats::values).collect();
    for (index, info) in STATS.iter().enumerate() {
        let name = metric_name(info);
        let kind = match info.kind {
            StatKind::Counter => "counter",
            StatKind::Gauge | StatKind::GaugeMax => "gauge",
        };
        let help = info.help.trim().replace('\\', "\\\\").replace('\n', " ");
        let _ = writeln!(page, "# HELP {name} {help}");
        let _ = writeln!(page, "# TYPE {name} {kind}");
        for (shard, values) in values.iter().enumerate() {
            let _ = writeln!(page, "{name}{{shard=\"{shard}\"}} {}", values[index]);
        }
    }
    render_histogram(
        &mut page,
        LATENCY_METRIC,
        "Time a message waited in its shard: from the loop turn that reaped its receive (from \
         a client or another shard) to the submission of its send at the end of that turn.",
        latencies.iter().map(|l| &l.receive_to_send),
    );
    render_histogram(
        &mut page,
        MESH_LATENCY_METRIC,
        "Time a PUBLISH forwarded from another shard took: from the loop turn of the \
         publisher's shard that received it to its take from the ring by this shard, once \
         per local subscriber it went to.",
        latencies.iter().map(|l| &l.mesh_transit),
    );
    let gauges = [
        (
            "ringmq_uptime_seconds",
            "Seconds since the broker started.",
            uptime_secs,
        ),
        (
            "ringmq_shards",
            "Shard threads running.",
            shards.len() as u64,
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory of the broker process.",
            resident_bytes,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            page,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let _ = writeln!(
        page,
        "# HELP ringmq_build_info The broker's version.\n# TYPE ringmq_build_info gauge\n\
         ringmq_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    page
}

/// A Prometheus histogram per shard: cumulative buckets up to `+Inf`, the sum in seconds and
/// the count.
fn render_histogram<'a>(
    page: &mut String,
    name: &str,
    help: &str,
    latencies: impl Iterator<Item = &'a Latency>,
) {
    let _ = writeln!(page, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (shard, latency) in latencies.enumerate() {
        let mut cumulative = 0u64;
        for (index, count) in latency.buckets.iter().enumerate() {
            cumulative += count;
            if index < LATENCY_BUCKETS {
                let le = latency_bound_ns(index) as f64 / 1e9;
                let _ = writeln!(
                    page,
                    "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {cumulative}"
                );
            } else {
                let _ = writeln!(
                    page,
                    "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {cumulative}"
                );
            }
        }
        let sum_secs = latency.sum_ns as f64 / 1e9;
        let _ = writeln!(page, "{name}_sum{{shard=\"{shard}\"}} {sum_secs}");
        let _ = writeln!(page, "{name}_count{{shard=\"{shard}\"}} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let find = |name: &str| STATS.iter().find(|i| i.name == name).unwrap();
        assert_eq!(
            metric_name(find("messages_in")),
            "ringmq_messages_received_total"
        );
        assert_eq!(metric_name(find("connections")), "ringmq_connections");
        assert_eq!(
            metric_name(find("table_full_count")),
            "ringmq_table_full_total"
        );
        let mut names: Vec<String> = STATS.iter().map(metric_name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), STATS.len(), "names are unique");
    }

    #[test]
    fn page_has_help_type_and_a_sample_per_shard() {
        let shards = [
            ShardStats {
                messages_in: 3,
                ..ShardStats::default()
            },
            ShardStats {
                messages_in: 4,
                ..ShardStats::default()
            },
        ];
        let mut latency = ShardLatency::default();
        latency.receive_to_send.record(1500, 3);
        latency.receive_to_send.record(3_000_000, 1);
        latency.mesh_transit.record(700, 5);
        let page = render(&shards, &[latency, ShardLatency::default()], 5, 1024);
        assert!(page.contains("# TYPE ringmq_messages_received_total counter\n"));
        assert!(page.contains("ringmq_messages_received_total{shard=\"0\"} 3\n"));
        assert!(page.contains("ringmq_messages_received_total{shard=\"1\"} 4\n"));
        assert!(page.contains("ringmq_uptime_seconds 5\n"));
        assert!(page.lines().all(|line| !line.is_empty()));
        let name = LATENCY_METRIC;
        assert!(page.contains(&format!("# TYPE {name} histogram\n")));
        assert!(page.contains(&format!("{name}_bucket{{shard=\"0\",le=\"0.000001\"}} 0\n")));
        assert!(page.contains(&format!("{name}_bucket{{shard=\"0\",le=\"0.000002\"}} 3\n")));
        assert!(page.contains(&format!("{name}_bucket{{shard=\"0\",le=\"0.004096\"}} 4\n")));
        assert!(page.contains(&format!("{name}_bucket{{shard=\"0\",le=\"+Inf\"}} 4\n")));
        assert!(page.contains(&format!("{name}_count{{shard=\"0\"}} 4\n")));
        assert!(page.contains(&format!("{name}_sum{{shard=\"0\"}} 0.0030045\n")));
        assert!(page.contains(&format!("{name}_count{{shard=\"1\"}} 0\n")));
        let name = MESH_LATENCY_METRIC;
        assert!(page.contains(&format!("# TYPE {name} histogram\n")));
        assert!(page.contains(&format!("{name}_bucket{{shard=\"0\",le=\"0.000001\"}} 5\n")));
        assert!(page.contains(&format!("{name}_count{{shard=\"0\"}} 5\n")));
    }
}
