//! Issue 7, items 8-10: what one client can make the broker hold and how much work one packet
//! may cost. Every limit here is counted when hit; every wait is bounded.
//!
//! The load figure (time to SUBACK for one SUBSCRIBE with 50,000 filters, and the PINGREQ round
//! trip another client sees meanwhile) is an ignored test run by `bench/subscribe.sh`, against
//! the broker given in `RINGMQ_BENCH_ADDR` (or one started here).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// `count` distinct filters under `prefix`, short so 50,000 fit the default packet size (one
/// in eight has a `+` level, so the wildcard part of the trie is exercised too).
fn many_filters(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| match n % 8 {
            0 => format!("{prefix}/+/{n:06}"),
            _ => format!("{prefix}/{n:06}"),
        })
        .collect()
}

/// A topic prefix unique to this process and test, short (filters are counted in tens of
/// thousands).
fn short_prefix(tag: &str) -> String {
    format!("{tag}{}", unique_id("").replace('-', ""))
}

/// A broker for a figure: the one in `RINGMQ_BENCH_ADDR` when set (bench/subscribe.sh starts
/// a release build at the commit it measures), else one started here.
fn bench_broker() -> (Option<TestBroker>, SocketAddr) {
    match std::env::var("RINGMQ_BENCH_ADDR") {
        Ok(addr) => (None, addr.parse().expect("RINGMQ_BENCH_ADDR is host:port")),
        Err(_) => {
            let broker = start_broker();
            let addr = broker.addr();
            (Some(broker), addr)
        }
    }
}

/// Issue 7 item 9: time to SUBACK for one SUBSCRIBE with `RINGMQ_BENCH_FILTERS` (50,000)
/// filters, and the PINGREQ round trips of a second client of the same broker meanwhile.
/// A figure, not a check: `bench/subscribe.sh` runs it before and after.
#[test]
#[ignore = "load figure: run with bench/subscribe.sh"]
fn big_subscribe_time_and_ping_latency() {
    let count: usize = std::env::var("RINGMQ_BENCH_FILTERS")
        .map(|v| v.parse().expect("RINGMQ_BENCH_FILTERS is a number"))
        .unwrap_or(50_000);
    let (_broker, addr) = bench_broker();
    let prefix = short_prefix("b");
    let filters = many_filters(&prefix, count);
    let pairs: Vec<(&str, u8)> = filters.iter().map(|f| (f.as_str(), 1)).collect();
    let subscribe = subscribe_bytes(7, &pairs);

    let stop = Arc::new(AtomicBool::new(false));
    let pinger = {
        let stop = stop.clone();
        let mut client = RawClient::connect(addr, &unique_id("pinger"));
        thread::spawn(move || {
            let mut round_trips = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                client.send(&PINGREQ);
                let packet = client
                    .try_read_packet(Duration::from_secs(120))
                    .expect("PINGRESP within 120 s");
                assert_eq!(packet.first_byte, 0xD0, "expected PINGRESP");
                round_trips.push(sent.elapsed());
                thread::sleep(Duration::from_micros(500));
            }
            round_trips
        })
    };
    let mut big = RawClient::connect(addr, &unique_id("big"));
    // Let the pinger settle into its rhythm first.
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    big.send(&subscribe);
    let packet = big
        .try_read_packet(Duration::from_secs(300))
        .expect("SUBACK within 300 s");
    let to_suback = started.elapsed();
    let (id, codes) = packet.suback();
    assert_eq!((id, codes.len()), (7, count));
    assert!(codes.iter().all(|&c| c == 1), "every filter granted QoS 1");
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut round_trips = pinger.join().expect("pinger");
    round_trips.sort_unstable();
    let percentile = |p: f64| {
        let index = ((round_trips.len() as f64 - 1.0) * p).round() as usize;
        round_trips[index].as_secs_f64() * 1e3
    };
    println!(
        "SUBSCRIBE with {count} filters ({} bytes): SUBACK after {:.1} ms; PINGREQ round trips \
         meanwhile and 0.4 s around it: {} samples, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        subscribe.len(),
        to_suback.as_secs_f64() * 1e3,
        round_trips.len(),
        percentile(0.5),
        percentile(0.99),
        percentile(1.0),
    );
    big.disconnect();
}
