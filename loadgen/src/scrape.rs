//! The broker's own counters beside the client's (`--metrics-url`): the Prometheus page read
//! before the run and after it, and the difference of its message counters. Where the client
//! saw loss, the broker's drops by cause say which limit took the messages (an outbox over
//! `outbox_bytes_max`, a full mesh overflow, ...), or that the broker dropped none.
//!
//! A blocking std `TcpStream` and a line parser: the page is fetched twice per run, outside the
//! measured window, and the text format's sample lines are `name{labels} value`. Values of one
//! name are summed over their labels (ringmq labels each by shard).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Serialize;

/// How long connecting to the endpoint, and each read or write, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// The most bytes of a page read (ringmq's is some tens of kB per shard).
const PAGE_BYTES_MAX: u64 = 16 << 20;

/// Counters summed over their labels, by metric name.
pub type Counters = BTreeMap<String, f64>;

/// What the broker counted during the run: the difference of two reads of its page.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BrokerDelta {
    pub url: String,
    /// PUBLISH packets the broker received from clients (`ringmq_messages_received_total`).
    pub received: u64,
    /// PUBLISH packets it wrote to subscribers' outboxes (`ringmq_messages_sent_total`).
    pub sent: u64,
    /// Every counter of dropped messages that grew, by name without the `ringmq_` prefix and
    /// `_total` suffix (`dropped_outbox_full`, `mesh_dropped_qos0`, ...).
    pub dropped: BTreeMap<String, u64>,
}

impl BrokerDelta {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// `GET` of an `http://HOST:PORT/PATH` URL; the body of a 200 answer.
pub fn fetch(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--metrics-url {url}: only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/metrics"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("--metrics-url {url}: {e}"))?
        .next()
        .ok_or_else(|| format!("--metrics-url {url}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("cannot reach the metrics endpoint {url}: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok();
    stream.set_write_timeout(Some(IO_TIMEOUT)).ok();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("metrics endpoint {url}: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(PAGE_BYTES_MAX)
        .read_to_end(&mut response)
        .map_err(|e| format!("metrics endpoint {url}: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("metrics endpoint {url}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        return Err(format!("metrics endpoint {url} answered {status:?}"));
    }
    Ok(body.to_string())
}

/// Sample lines of the text format, each name's values summed over its labels. Comments,
/// blank lines and anything unparsable are skipped; a trailing timestamp is ignored.
pub fn parse(page: &str) -> Counters {
    let mut counters = Counters::new();
    for line in page.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(at) => line.split_at(at),
            None => continue,
        };
        // Past the labels (a label value may hold a space, never an unescaped '}').
        let rest = match rest.strip_prefix('{') {
            Some(labelled) => match labelled.rfind('}') {
                Some(end) => &labelled[end + 1..],
                None => continue,
            },
            None => rest,
        };
        let Some(Ok(value)) = rest.split_whitespace().next().map(str::parse::<f64>) else {
            continue;
        };
        *counters.entry(name.to_string()).or_default() += value;
    }
    counters
}

/// What grew between two reads of the page.
pub fn delta(url: &str, before: &Counters, after: &Counters) -> BrokerDelta {
    let grew = |name: &str| {
        let was = before.get(name).copied().unwrap_or(0.0);
        let now = after.get(name).copied().unwrap_or(0.0);
        (now - was).max(0.0) as u64
    };
    let dropped = after
        .keys()
        .filter_map(|name| {
            let short = name.strip_prefix("ringmq_")?.strip_suffix("_total")?;
            short
                .contains("dropped")
                .then(|| (short.to_string(), grew(name)))
        })
        .filter(|&(_, count)| count > 0)
        .collect();
    BrokerDelta {
        url: url.to_string(),
        received: grew("ringmq_messages_received_total"),
        sent: grew("ringmq_messages_sent_total"),
        dropped,
    }
}

/// The summary's line: the broker's counts, its drops by cause, and the client's loss.
pub fn summary_line(broker: &BrokerDelta, client_lost: u64) -> String {
    let causes = if broker.dropped.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = broker
            .dropped
            .iter()
            .map(|(cause, count)| format!("{cause} {count}"))
            .collect();
        format!(" ({})", list.join(", "))
    };
    format!(
        "broker ({}): received {}, sent {}, dropped {}{causes}; client-side lost {client_lost}\n",
        broker.url,
        broker.received,
        broker.sent,
        broker.dropped_total()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP ringmq_messages_received_total PUBLISH packets received.
# TYPE ringmq_messages_received_total counter
ringmq_messages_received_total{shard=\"0\"} 10
ringmq_messages_received_total{shard=\"1\"} 5
ringmq_messages_sent_total{shard=\"0\"} 12 1700000000000
ringmq_dropped_outbox_full_total{shard=\"0\"} 3
ringmq_mesh_dropped_qos0_total{shard=\"1\"} 1
ringmq_dropped_expired_total{shard=\"0\"} 0
ringmq_receive_to_send_seconds_bucket{shard=\"0\",le=\"+Inf\"} 7
ringmq_build_info{version=\"a b}c\"} 1
ringmq_uptime_seconds 42

garbage line
";

    #[test]
    fn values_are_summed_over_labels() {
        let counters = parse(PAGE);
        assert_eq!(counters["ringmq_messages_received_total"], 15.0);
        assert_eq!(
            counters["ringmq_messages_sent_total"], 12.0,
            "timestamp ignored"
        );
        assert_eq!(counters["ringmq_uptime_seconds"], 42.0);
        assert_eq!(
            counters["ringmq_build_info"], 1.0,
            "a brace inside a label value"
        );
        assert_eq!(counters["ringmq_receive_to_send_seconds_bucket"], 7.0);
        assert!(!counters.contains_key("garbage"));
    }

    #[test]
    fn the_delta_names_each_cause_that_dropped() {
        let before = parse(PAGE);
        let mut after = before.clone();
        *after.get_mut("ringmq_messages_received_total").unwrap() += 100.0;
        *after.get_mut("ringmq_messages_sent_total").unwrap() += 90.0;
        *after.get_mut("ringmq_dropped_outbox_full_total").unwrap() += 10.0;
        let delta = delta("http://x/metrics", &before, &after);
        assert_eq!((delta.received, delta.sent), (100, 90));
        assert_eq!(delta.dropped.len(), 1, "{:?}", delta.dropped);
        assert_eq!(delta.dropped["dropped_outbox_full"], 10);
        assert_eq!(
            summary_line(&delta, 10),
            "broker (http://x/metrics): received 100, sent 90, dropped 10 \
             (dropped_outbox_full 10); client-side lost 10\n"
        );
    }

    #[test]
    fn a_bad_url_says_what_is_wrong() {
        assert!(fetch("https://127.0.0.1:1/metrics")
            .unwrap_err()
            .contains("only http://"));
        assert!(fetch("http://127.0.0.1:1/metrics")
            .unwrap_err()
            .contains("cannot reach"));
    }
}
