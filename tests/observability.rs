//! Watching a running broker (issue 11): the `$SYS/broker/...` topics, read by independent
//! subscribers (rumqttc, mosquitto_sub), and the Prometheus page at `/metrics`, read by a real
//! parser (the `prometheus-parse` crate), both checked against known traffic on 1 and 2
//! shards (sums over shards); a client's PUBLISH to `$SYS/...` is dropped.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::binary::Ringmq;
use common::*;
use ringmq::config::Config;
use rumqttc::QoS;

/// $SYS values come every second from shard 0's view of the other shards (at most a second
/// old): a few seconds settle any count.
const SETTLE: Duration = Duration::from_secs(15);

fn observed_config(shards: usize) -> Config {
    Config {
        shards,
        sys_interval_secs: 1,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..test_config()
    }
}

fn start(shards: usize) -> TestBroker {
    TestBroker::start(observed_config(shards))
}

/// An independent subscriber to `filter` whose received topics and payloads are collected
/// until `done` holds for them; panics (with what it saw) after `SETTLE`.
fn watch_until(
    addr: SocketAddr,
    filter: &str,
    what: &str,
    done: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let mut watcher = MqttClient::connect(mqtt_options(addr, "sys-watch"));
    watcher.subscribe(filter, QoS::AtMostOnce);
    let mut seen = HashMap::new();
    let deadline = Instant::now() + SETTLE;
    loop {
        if done(&seen) {
            watcher.disconnect();
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {SETTLE:?}; $SYS said {seen:#?}"
        );
        if let Some(publish) = watcher.try_recv_publish(Duration::from_millis(200)) {
            let value = String::from_utf8_lossy(&publish.payload).into_owned();
            seen.insert(publish.topic, value);
        }
    }
}

fn number(seen: &HashMap<String, String>, topic: &str) -> Option<f64> {
    seen.get(topic)?.parse().ok()
}

/// `GET path` over a plain socket: (status line, headers and body as text).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect to metrics");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read answer");
    let status = response.lines().next().unwrap_or_default().to_string();
    (status, response)
}

const RECEIVE_TO_SEND: &str = "ringmq_receive_to_send_seconds";
const MESH_TRANSIT: &str = "ringmq_mesh_transit_seconds";

/// Histogram `name`'s observations, summed over shards.
fn histogram_count(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    histogram_per_shard(scrape, name)
        .iter()
        .map(|buckets| buckets.last().map_or(0.0, |b| b.1))
        .sum()
}

/// Per shard, histogram `name`'s (upper bound, cumulative count) pairs.
fn histogram_per_shard(scrape: &prometheus_parse::Scrape, name: &str) -> Vec<Vec<(f64, f64)>> {
    let mut shards: Vec<(usize, Vec<(f64, f64)>)> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let shard = s.labels.get("shard").expect("shard label").parse().unwrap();
            let prometheus_parse::Value::Histogram(buckets) = &s.value else {
                panic!("not a histogram: {s:?}");
            };
            let mut buckets: Vec<(f64, f64)> =
                buckets.iter().map(|b| (b.less_than, b.count)).collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            (shard, buckets)
        })
        .collect();
    shards.sort_by_key(|(shard, _)| *shard);
    shards.into_iter().map(|(_, buckets)| buckets).collect()
}

/// A histogram as Prometheus wants it, with no more observations than `sent`.
fn check_histogram(
    page: &prometheus_parse::Scrape,
    name: &str,
    shard: usize,
    buckets: &[(f64, f64)],
    sent: f64,
) {
    assert!(buckets.len() > 10, "{name}: {buckets:?}");
    assert!(buckets
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    let (le, count) = *buckets.last().unwrap();
    assert!(le.is_infinite(), "{name}: {buckets:?}");
    assert!(count <= sent, "{name} shard {shard}: {count} > {sent}");
    assert_eq!(per_shard(page, &format!("{name}_count"))[shard], count);
    let sum_secs = per_shard(page, &format!("{name}_sum"))[shard];
    assert!(
        sum_secs >= 0.0 && sum_secs < count.max(1.0),
        "{name}: {sum_secs} s"
    );
}

/// The page at /metrics, parsed by `prometheus-parse`.
fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let (status, response) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{response}");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "exposition format 0.0.4: {head}"
    );
    let lines = body.lines().map(|line| Ok(line.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("prometheus-parse reads the page")
}

/// Per-shard values of `name` (label `shard`), in shard order.
fn per_shard(scrape: &prometheus_parse::Scrape, name: &str) -> Vec<f64> {
    let mut values: Vec<(usize, f64)> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let shard = s
                .labels
                .get("shard")
                .expect("a shard label")
                .parse()
                .unwrap();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: unexpected value {other:?}"),
            };
            (shard, value)
        })
        .collect();
    values.sort_by_key(|&(shard, _)| shard);
    values.into_iter().map(|(_, v)| v).collect()
}

fn scrape_until(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let deadline = Instant::now() + SETTLE;
    loop {
        let page = scrape(addr);
        if done(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not on /metrics within {SETTLE:?}: {:#?}",
            page.samples
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// N subscribers spread over the shards, one publisher, M QoS 1 messages each subscriber gets,
/// one retained message from mosquitto_pub. The clients stay connected while it lives.
struct Traffic {
    _subscribers: Vec<MqttClient>,
    _publisher: MqttClient,
    n: u64,
    m: u64,
}

fn known_traffic(broker: &TestBroker, shards: usize) -> Traffic {
    let (n, m) = (4u64, 25u64);
    let topic = unique_topic("obs");
    let subscribers: Vec<MqttClient> = (0..n as usize)
        .map(|i| {
            let id = unique_id_on(i % shards, shards, "obs-sub");
            let mut client = MqttClient::connect(mqtt_options_with_id(broker.addr(), &id));
            client.subscribe(&topic, QoS::AtLeastOnce);
            client
        })
        .collect();
    let id = unique_id_on(shards - 1, shards, "obs-pub");
    let mut publisher = MqttClient::connect(mqtt_options_with_id(broker.addr(), &id));
    for i in 0..m {
        publisher.publish_acked(&topic, QoS::AtLeastOnce, false, format!("m{i}"));
    }
    let mut subscribers = subscribers;
    for subscriber in &mut subscribers {
        for i in 0..m {
            let publish = subscriber.recv_publish();
            assert_eq!(&publish.payload[..], format!("m{i}").as_bytes());
        }
    }
    let retained = unique_topic("obs-retained");
    let finished = mosquitto_pub(
        broker.port(),
        &["-t", &retained, "-m", "kept", "-r", "-q", "1"],
    );
    assert!(finished.status.success(), "{finished:?}");
    Traffic {
        _subscribers: subscribers,
        _publisher: publisher,
        n,
        m,
    }
}

fn sys_topics_match_known_traffic(shards: usize) {
    let broker = start(shards);
    let traffic = known_traffic(&broker, shards);
    let (n, m) = (traffic.n, traffic.m);
    // Connected now: N subscribers, the publisher and the watcher itself.
    let connected = n + 2;
    let seen = watch_until(broker.addr(), "$SYS/broker/#", "counts", |seen| {
        number(seen, "$SYS/broker/clients/connected") == Some(connected as f64)
            && number(seen, "$SYS/broker/messages/received").unwrap_or(0.0) >= (m + 1) as f64
            && number(seen, "$SYS/broker/messages/sent").unwrap_or(0.0) >= (n * m) as f64
            && number(seen, "$SYS/broker/retained messages/count").unwrap_or(0.0) >= 1.0
            && number(seen, "$SYS/broker/load/messages/received/1min").unwrap_or(0.0) > 0.0
            // Each shard's slot is up to a second old when shard 0 sums them, and a new
            // publication arrives topic by topic: wait for every value to catch up.
            && number(seen, "$SYS/broker/subscriptions/count").unwrap_or(0.0) >= (n + 1) as f64
            && number(seen, "$SYS/broker/clients/maximum").unwrap_or(0.0) >= connected as f64
            && number(seen, "$SYS/broker/clients/total").unwrap_or(0.0) >= connected as f64
            && number(seen, "$SYS/broker/clients/disconnected") == Some(0.0)
            && number(seen, "$SYS/broker/bytes/sent").unwrap_or(0.0) > (n * m) as f64 * 4.0
            && (0..shards)
                .all(|i| seen.contains_key(&format!("$SYS/broker/shards/{i}/mesh_pushes")))
    });
    let version = &seen["$SYS/broker/version"];
    assert_eq!(
        version,
        &format!("ringmq version {}", env!("CARGO_PKG_VERSION"))
    );
    let uptime = &seen["$SYS/broker/uptime"];
    let secs = uptime
        .strip_suffix(" seconds")
        .unwrap_or_else(|| panic!("uptime {uptime:?} is \"N seconds\""));
    assert!(secs.parse::<u64>().is_ok(), "uptime {uptime:?}");
    assert!(number(&seen, "$SYS/broker/clients/maximum").unwrap() >= connected as f64);
    assert!(number(&seen, "$SYS/broker/clients/total").unwrap() >= connected as f64);
    assert_eq!(number(&seen, "$SYS/broker/clients/disconnected"), Some(0.0));
    // The N subscriptions to the topic, plus the watcher's `$SYS/broker/#`.
    assert!(number(&seen, "$SYS/broker/subscriptions/count").unwrap() >= (n + 1) as f64);
    // PUBLISH (M + 1) and SUBSCRIBE packets at least.
    assert!(number(&seen, "$SYS/broker/bytes/received").unwrap() > (m + 1) as f64 * 4.0);
    assert!(number(&seen, "$SYS/broker/bytes/sent").unwrap() > (n * m) as f64 * 4.0);
    assert!(number(&seen, "$SYS/broker/heap/current").unwrap() > 0.0);
    for direction in ["received", "sent"] {
        for window in ["1min", "5min", "15min"] {
            let topic = format!("$SYS/broker/load/messages/{direction}/{window}");
            assert!(number(&seen, &topic).is_some(), "{topic}");
        }
    }
    assert_eq!(
        number(&seen, "$SYS/broker/publish/messages/dropped"),
        Some(0.0)
    );
    // The per-shard counts add up to the broker's.
    let connections: f64 = (0..shards)
        .map(|i| number(&seen, &format!("$SYS/broker/shards/{i}/connections")).unwrap())
        .sum();
    assert!(connections >= 1.0 && connections <= connected as f64);
    // mosquitto_sub sees them too, retained, from `$SYS/#`; and a specific topic.
    let mut sub = Proc::spawn(
        "mosquitto_sub",
        &mosquitto_sub_args(broker.port(), "$SYS/broker/version", 0, 1, &[]),
    );
    let lines = sub.wait_line(MESSAGE_MARK);
    let line = lines.last().unwrap();
    assert!(
        line.contains("$SYS/broker/version|0|1|ringmq version"),
        "retained, from mosquitto_sub: {line}"
    );
    // Every shard's own counters go out live each interval, not retained (shards x shards
    // replicas otherwise): a new subscriber gets the next publication, retain flag 0.
    let last_shard = shards - 1;
    let topic = format!("$SYS/broker/shards/{last_shard}/connections");
    let mut sub = Proc::spawn(
        "mosquitto_sub",
        &mosquitto_sub_args(broker.port(), &topic, 0, 1, &[]),
    );
    let lines = sub.wait_line(MESSAGE_MARK);
    let line = lines.last().unwrap();
    assert!(
        line.contains(&format!("{topic}|0|0|")),
        "live, not retained, from mosquitto_sub: {line}"
    );
    let finished = mosquitto_sub_until_count(broker.port(), "$SYS/#", 5);
    assert!(finished
        .iter()
        .all(|line| line.starts_with(&format!("{MESSAGE_MARK}$SYS/"))));
    drop(traffic);
}

/// `count` messages of `filter` through mosquitto_sub, as `MSG|topic|...` lines.
fn mosquitto_sub_until_count(port: u16, filter: &str, count: usize) -> Vec<String> {
    let sub = Proc::spawn(
        "mosquitto_sub",
        &mosquitto_sub_args(port, filter, 0, count, &[]),
    );
    let finished = sub.finish();
    assert!(finished.status.success(), "{finished:?}");
    let messages: Vec<String> = finished
        .stdout
        .into_iter()
        .filter(|line| line.starts_with(MESSAGE_MARK))
        .collect();
    assert_eq!(messages.len(), count, "{messages:?}");
    messages
}

#[test]
fn sys_topics_match_known_traffic_on_one_shard() {
    sys_topics_match_known_traffic(1);
}

#[test]
fn sys_topics_match_known_traffic_on_two_shards() {
    sys_topics_match_known_traffic(2);
}

fn metrics_match_known_traffic(shards: usize) {
    let broker = start(shards);
    let addr = broker.metrics_addr().expect("metrics_listen is set");
    let traffic = known_traffic(&broker, shards);
    let (n, m) = (traffic.n, traffic.m);
    let connected = (n + 1) as f64;
    let forwarded = (0..n)
        .filter(|i| (*i as usize) % shards != shards - 1)
        .count() as u64
        * m;
    let page = scrape_until(addr, "counts", |page| {
        let sum = |name| per_shard(page, name).iter().sum::<f64>();
        // Each shard's values are up to a second old: wait for all of them.
        sum("ringmq_connections") == connected
            && sum("ringmq_messages_received_total") >= (m + 1) as f64
            && sum("ringmq_messages_sent_total") >= (n * m) as f64
            && sum("ringmq_subscriptions") >= n as f64
            && per_shard(page, "ringmq_retained_messages")
                .iter()
                .all(|&count| count >= 1.0)
            && histogram_count(page, RECEIVE_TO_SEND) >= (n * m) as f64
            // Subscriber i is on shard i % shards; those off the publisher's get forwards.
            && histogram_count(page, MESH_TRANSIT) >= forwarded as f64
    });
    if shards == 1 {
        assert_eq!(histogram_count(&page, MESH_TRANSIT), 0.0, "no other shard");
    }
    // The histograms: one per shard, cumulative buckets ending at +Inf, a count and a sum
    // beside them, and no more messages in them than the shard sent.
    let sent = per_shard(&page, "ringmq_messages_sent_total");
    for name in [RECEIVE_TO_SEND, MESH_TRANSIT] {
        let histograms = histogram_per_shard(&page, name);
        assert_eq!(histograms.len(), shards, "{name}");
        for (shard, buckets) in histograms.iter().enumerate() {
            check_histogram(&page, name, shard, buckets, sent[shard]);
        }
    }
    // One sample per shard for every per-shard metric, HELP and TYPE for each.
    for name in [
        "ringmq_connections",
        "ringmq_messages_received_total",
        "ringmq_messages_sent_total",
        "ringmq_bytes_received_total",
        "ringmq_mesh_pushes_total",
        "ringmq_dropped_outbox_full_total",
        "ringmq_retained_messages",
        "ringmq_subscriptions",
    ] {
        assert_eq!(per_shard(&page, name).len(), shards, "{name}");
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            page.docs.contains_key(name) || page.docs.contains_key(family),
            "HELP for {name}: {:?}",
            page.docs.keys()
        );
    }
    let sum = |name| per_shard(&page, name).iter().sum::<f64>();
    assert!(sum("ringmq_bytes_received_total") > 0.0);
    assert!(sum("ringmq_subscriptions") >= n as f64);
    // The retained message is on every shard's replica: each shard reports it.
    assert!(per_shard(&page, "ringmq_retained_messages")
        .iter()
        .all(|&count| count >= 1.0));
    if shards > 1 {
        assert!(
            sum("ringmq_mesh_pushes_total") > 0.0,
            "publishes crossed shards"
        );
    }
    let process = |name: &str| {
        page.samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert!(process("process_resident_memory_bytes") > 0.0);
    assert_eq!(process("ringmq_shards"), shards as f64);
    assert!(process("ringmq_uptime_seconds") >= 0.0);
    let info = page
        .samples
        .iter()
        .find(|s| s.metric == "ringmq_build_info")
        .expect("build info");
    assert_eq!(info.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    // Anything but GET /metrics.
    let (status, _) = http_get(addr, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    drop(traffic);
}

#[test]
fn metrics_match_known_traffic_on_one_shard() {
    metrics_match_known_traffic(1);
}

#[test]
fn metrics_match_known_traffic_on_two_shards() {
    metrics_match_known_traffic(2);
}

/// Spec 4.7.2: `$SYS/` is the server's. A client's PUBLISH there, at any QoS, retained or not,
/// from 3.1.1 or 5.0, reaches no subscriber and is not retained; it is counted.
fn client_publish_to_sys_is_dropped(shards: usize) {
    let broker = start(shards);
    let addr = broker.metrics_addr().unwrap();
    let mut listener = MqttClient::connect(mqtt_options_with_id(
        broker.addr(),
        &unique_id_on(0, shards, "sys-listener"),
    ));
    listener.subscribe("$SYS/x/#", QoS::AtLeastOnce);
    let mut publisher = MqttClient::connect(mqtt_options_with_id(
        broker.addr(),
        &unique_id_on(shards - 1, shards, "sys-forger"),
    ));
    publisher.publish_acked("$SYS/x/forged", QoS::AtLeastOnce, true, "forged");
    publisher.publish_acked("$SYS/x/forged", QoS::ExactlyOnce, false, "forged");
    publisher.publish_acked("$SYS/x/forged", QoS::AtMostOnce, false, "forged");
    for args in [
        &["-t", "$SYS/x/forged", "-m", "forged", "-q", "1", "-r"][..],
        &["-V", "5", "-t", "$SYS/x/forged", "-m", "forged", "-q", "2"][..],
    ] {
        let finished = mosquitto_pub(broker.port(), args);
        assert!(finished.status.success(), "{finished:?}");
    }
    listener.expect_no_publish();
    // Not retained either: a new subscriber gets nothing.
    let mut late = MqttClient::connect(mqtt_options(broker.addr(), "sys-late"));
    late.subscribe("$SYS/x/#", QoS::AtLeastOnce);
    late.expect_no_publish();
    let page = scrape_until(addr, "the drops counted", |page| {
        per_shard(page, "ringmq_dropped_sys_publish_total")
            .iter()
            .sum::<f64>()
            == 5.0
    });
    let delivered: f64 = per_shard(&page, "ringmq_messages_sent_total").iter().sum();
    assert_eq!(delivered, 0.0, "nothing was delivered");
    // A normal topic still flows between the same clients.
    let topic = unique_topic("after-sys");
    listener.subscribe(&topic, QoS::AtLeastOnce);
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, "ok");
    assert_eq!(&listener.recv_publish().payload[..], b"ok");
}

#[test]
fn client_publish_to_sys_is_dropped_on_one_shard() {
    client_publish_to_sys_is_dropped(1);
}

#[test]
fn client_publish_to_sys_is_dropped_on_two_shards() {
    client_publish_to_sys_is_dropped(2);
}

/// [MQTT-4.7.2-1] `#` alone does not match `$SYS` topics, while `$SYS/#` does.
#[test]
fn hash_alone_does_not_match_sys() {
    let broker = start(2);
    let mut everything = MqttClient::connect(mqtt_options(broker.addr(), "hash"));
    everything.subscribe("#", QoS::AtMostOnce);
    everything.subscribe("+/broker/#", QoS::AtMostOnce);
    // $SYS goes out every second: wait out two publications, then check with a real message.
    let seen = watch_until(broker.addr(), "$SYS/#", "two $SYS publications", |seen| {
        seen.contains_key("$SYS/broker/uptime")
    });
    assert!(seen.contains_key("$SYS/broker/version"));
    thread::sleep(Duration::from_millis(2200));
    let topic = unique_topic("plain");
    everything.publish(&topic, QoS::AtMostOnce, false, "plain");
    let mut topics = Vec::new();
    while let Some(publish) = everything.try_recv_publish(QUIET) {
        topics.push(publish.topic);
    }
    assert!(
        topics.iter().all(|t| !t.starts_with('$')),
        "`#` and `+/...` matched $SYS: {topics:?}"
    );
    assert!(topics.contains(&topic), "{topics:?}");
}

/// `sys_interval_secs = 0`: no `$SYS` topics at all.
#[test]
fn sys_interval_zero_publishes_nothing() {
    let broker = TestBroker::start(Config {
        sys_interval_secs: 0,
        ..observed_config(1)
    });
    let mut watcher = MqttClient::connect(mqtt_options(broker.addr(), "sys-off"));
    watcher.subscribe("$SYS/#", QoS::AtMostOnce);
    assert!(
        watcher
            .try_recv_publish(Duration::from_millis(2500))
            .is_none(),
        "a $SYS message with sys_interval_secs = 0"
    );
    // The endpoint still serves.
    let page = scrape(broker.metrics_addr().unwrap());
    assert_eq!(per_shard(&page, "ringmq_connections").len(), 1);
}

/// The broker's own retained `$SYS` topics take none of the clients' room under
/// `retained_max`: with a limit of 2, clients still retain 2 messages once $SYS is out.
#[test]
fn sys_topics_do_not_count_against_retained_max() {
    let mut config = observed_config(2);
    config.limits.retained_max = 2;
    let broker = TestBroker::start(config);
    watch_until(broker.addr(), "$SYS/#", "$SYS published", |seen| {
        seen.len() > 2
    });
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "retainer"));
    let topics = [
        unique_topic("kept"),
        unique_topic("kept"),
        unique_topic("over"),
    ];
    for topic in &topics {
        publisher.publish_acked(topic, QoS::AtLeastOnce, true, "r");
    }
    let mut late = MqttClient::connect(mqtt_options(broker.addr(), "late"));
    for topic in &topics[..2] {
        late.subscribe(topic, QoS::AtLeastOnce);
        let publish = late.recv_publish();
        assert!(publish.retain && publish.topic == *topic, "{publish:?}");
    }
    late.subscribe(&topics[2], QoS::AtLeastOnce);
    late.expect_no_publish();
    // Each replica holds the clients' 2 and the broker's own; every shard's slot lags its
    // tick, so the wait covers both values (a refusal seen on one shard says nothing of the
    // other's retained count).
    let page = scrape_until(
        broker.metrics_addr().unwrap(),
        "one refusal, and every replica past 2",
        |page| {
            per_shard(page, "ringmq_retained_refused_total")
                .iter()
                .sum::<f64>()
                == 1.0
                && per_shard(page, "ringmq_retained_messages")
                    .iter()
                    .all(|&count| count > 2.0)
        },
    );
    assert_eq!(
        per_shard(&page, "ringmq_retained_refused_total")
            .iter()
            .sum::<f64>(),
        1.0
    );
    assert!(per_shard(&page, "ringmq_retained_messages")
        .iter()
        .all(|&count| count > 2.0));
}

/// Every `ringmq_...` metric the Grafana dashboard queries is on the page.
#[test]
fn grafana_dashboard_queries_metrics_that_exist() {
    let broker = start(1);
    let page = scrape(broker.metrics_addr().unwrap());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana/ringmq.json");
    let dashboard = std::fs::read_to_string(path).expect("the dashboard");
    let mut names: Vec<&str> = dashboard
        .match_indices("ringmq_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        // The parser files a histogram's buckets under its family's name.
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            page.samples
                .iter()
                .any(|s| s.metric == name || s.metric == family),
            "the dashboard queries {name}, which /metrics does not serve"
        );
    }
}

/// The binary with its defaults (`$SYS` every 10 s, the first at the first tick) and
/// `--metrics-listen`: both answer.
#[test]
fn binary_serves_metrics_and_sys_with_default_interval() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let broker = Ringmq::start(&["--shards", "2", "--metrics-listen", &metrics_listen]);
    let mqtt_port = broker.port();
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect_timeout(&metrics, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "no metrics listener");
        thread::sleep(Duration::from_millis(50));
    }
    let page = scrape(metrics);
    assert_eq!(per_shard(&page, "ringmq_connections").len(), 2);
    let messages = mosquitto_sub_until_count(mqtt_port, "$SYS/broker/uptime", 1);
    assert!(messages[0].ends_with(" seconds"), "{messages:?}");
}
