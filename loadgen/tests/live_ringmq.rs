//! The load generator against the real ringmq broker, started in this process on an ephemeral
//! loopback port. An open-loop run sends an exactly known number of messages (one per intended
//! send time), so the counts must come out exact: nothing lost, duplicated or reordered.

mod common;

use ringmq::broker::Broker;
use ringmq::config::Config;
use ringmq_loadgen::run::Report;

fn start_broker() -> Broker {
    start_broker_with(Config::default())
}

/// As `start_broker`, with the rest of `config` (one shard unless it names more).
fn start_broker_with(config: Config) -> Broker {
    Broker::start(Config {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        shards: config.shards.max(1),
        ring_files_max: 1024,
        ..config
    })
    .expect("the broker starts")
}

/// 4 pairs at 2000 messages/s for 0.5 s through `broker`, with `extra` arguments: runs the
/// load, stops the broker and asserts that the 1000 messages sent all came back.
fn pairs_1000_through(broker: Broker, extra: &[&str]) -> Report {
    let report = pairs_1000(&broker, extra);
    broker.stop().expect("no shard failed");
    report
}

/// `pairs_1000_through` leaving the broker running.
fn pairs_1000(broker: &Broker, extra: &[&str]) -> Report {
    let port = broker.local_addr().port().to_string();
    let mut args = vec![
        "pairs",
        "-n",
        "4",
        "--rate",
        "2000",
        "--duration",
        "0.5",
        "--port",
        &port,
        "--warmup",
        "0",
        "--drain",
        "2",
    ];
    args.extend(extra);
    let report = common::loadgen(&args);
    let s = &report.summary;
    assert_eq!(
        (s.sent, s.received, s.lost),
        (1000, 1000, 0),
        "{:?}",
        s.errors
    );
    report
}

fn check_exact(args: &[&str], sent: u64, copies: u64) {
    let broker = start_broker();
    let port = broker.local_addr().port().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--port", &port, "--warmup", "0", "--drain", "2", "-q"]);
    let report = common::loadgen(&all);
    broker.stop().expect("no shard failed");
    let s = &report.summary;
    assert_eq!(s.connect_failed, 0, "{:?}", s.errors);
    assert_eq!(s.connected, s.connections_planned);
    assert_eq!(s.sent, sent, "{args:?}");
    assert_eq!(s.sent_in_window, sent);
    assert_eq!(s.expected, sent * copies);
    assert_eq!(s.received, sent * copies, "{args:?}");
    assert_eq!(s.received_in_window, sent * copies);
    assert_eq!(
        (s.lost, s.duplicates, s.reordered, s.unexpected),
        (0, 0, 0, 0),
        "{args:?}"
    );
    assert_eq!(s.dropped, 0, "{:?}", s.errors);
    assert_eq!(s.latency.count, sent * copies);
    assert!(s.latency.p50_us > 0.0 && s.latency.max_us >= s.latency.p99_us);
}

#[test]
fn pairs_qos0_counts_exactly() {
    // 2000 msgs/s for 0.5 s: 1000 intended send times over 4 pairs.
    check_exact(
        &["pairs", "-n", "4", "--rate", "2000", "--duration", "0.5"],
        1000,
        1,
    );
}

/// Latency is read once per recv completion and send lag once per publisher batch, and with
/// `-q` no per-second histogram is kept: every message is still in both histograms, each
/// message's latency covers its send lag (so the largest latency is at least the largest lag),
/// and no latency is a stale clock reading (under 1 µs through a broker on loopback).
#[test]
fn latency_and_send_lag_count_every_message_with_and_without_progress() {
    for quiet in [false, true] {
        let extra: &[&str] = if quiet { &["-q"] } else { &[] };
        let report = pairs_1000_through(start_broker(), extra);
        let s = &report.summary;
        assert_eq!(s.latency.count, 1000, "quiet {quiet}");
        assert_eq!(s.send_lag.count, 1000, "quiet {quiet}");
        assert!(
            s.latency.min_us >= 1.0,
            "quiet {quiet}: min {} µs",
            s.latency.min_us
        );
        assert!(
            s.latency.max_us >= s.send_lag.max_us,
            "quiet {quiet}: latency max {} µs, send lag max {} µs",
            s.latency.max_us,
            s.send_lag.max_us
        );
    }
}

#[test]
fn two_threads_split_the_rate_exactly() {
    // 3 pairs over 2 threads: 2/3 and 1/3 of 1000 msgs/s, 500 messages in all.
    check_exact(
        &[
            "pairs",
            "-n",
            "3",
            "--threads",
            "2",
            "--rate",
            "1000",
            "--duration",
            "0.5",
        ],
        500,
        1,
    );
}

#[test]
fn pairs_qos1_counts_exactly() {
    check_exact(
        &[
            "pairs",
            "-n",
            "2",
            "--qos",
            "1",
            "--rate",
            "1000",
            "--duration",
            "0.5",
        ],
        500,
        1,
    );
}

#[test]
fn pairs_qos2_mqtt5_counts_exactly() {
    check_exact(
        &[
            "pairs",
            "-n",
            "2",
            "--qos",
            "2",
            "--mqtt",
            "5",
            "--rate",
            "1000",
            "--duration",
            "0.5",
        ],
        500,
        1,
    );
}

#[test]
fn retained_pairs_count_exactly_and_leave_one_message_per_topic_on_every_shard() {
    let broker = start_broker_with(Config {
        shards: 2,
        sys_interval_secs: 0,
        ..Config::default()
    });
    let report = pairs_1000(&broker, &["--retain", "-q"]);
    assert!(report.summary.retain);
    // Each pair's topic holds its last message, replicated on both shards (their counters are
    // published about once a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut retained = Vec::new();
    while std::time::Instant::now() < deadline {
        retained = broker.stats().iter().map(|s| s.retained_messages).collect();
        if retained == [4, 4] {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(retained, [4, 4], "retained messages per shard");
    broker.stop().expect("no shard failed");
}

#[test]
fn fanout_qos0_counts_every_copy() {
    check_exact(
        &[
            "fanout",
            "--publishers",
            "1",
            "--subscribers",
            "3",
            "--rate",
            "1000",
            "--duration",
            "0.4",
        ],
        400,
        3,
    );
}

#[test]
fn closed_loop_qos1_loses_nothing() {
    let broker = start_broker();
    let port = broker.local_addr().port().to_string();
    let report = common::loadgen(&[
        "pairs",
        "-n",
        "2",
        "--qos",
        "1",
        "--max",
        "--inflight",
        "16",
        "--port",
        &port,
        "--warmup",
        "0",
        "--duration",
        "0.5",
        "--drain",
        "2",
        "-q",
    ]);
    broker.stop().expect("no shard failed");
    let s = &report.summary;
    assert!(s.sent > 100, "closed loop made progress: {}", s.sent);
    assert_eq!(s.received, s.sent);
    assert_eq!(s.acked, s.sent, "every QoS 1 publish acknowledged");
    assert_eq!((s.lost, s.duplicates, s.reordered), (0, 0, 0));
}

/// `--metrics-url`: the broker's own counts over the run, read from its Prometheus endpoint
/// before and after, match what the client sent and got, and the summary prints them.
#[test]
fn metrics_url_puts_the_brokers_counts_beside_the_clients() {
    let broker = start_broker_with(Config {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    });
    let port = broker.local_addr().port().to_string();
    let url = format!(
        "http://{}/metrics",
        broker.metrics_addr().expect("metrics_listen is set")
    );
    let report = pairs_1000_through(broker, &["--metrics-url", &url, "-q"]);
    let s = &report.summary;
    let metrics = s.broker_metrics.as_ref().expect("the broker's counts");
    assert_eq!(metrics.url, url);
    assert_eq!(metrics.received, 1000, "{metrics:?}");
    assert_eq!(metrics.sent, 1000, "{metrics:?}");
    assert!(metrics.dropped.is_empty(), "{metrics:?}");
    let text = ringmq_loadgen::run::human_summary(s);
    assert!(
        text.contains(&format!(
            "broker ({url}): received 1000, sent 1000, dropped 0; client-side lost 0\n"
        )),
        "{text}"
    );

    // An endpoint that is not there fails the run before any load, saying so.
    let argv = [
        "ringmq-loadgen",
        "pairs",
        "--rate",
        "10",
        "--port",
        &port,
        "--metrics-url",
        "http://127.0.0.1:1/metrics",
    ];
    let cli = <ringmq_loadgen::cli::Cli as clap::Parser>::try_parse_from(argv).unwrap();
    let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    let error = ringmq_loadgen::run::run(&cli.command, &argv)
        .err()
        .expect("no endpoint, no run");
    assert!(
        error.contains("cannot reach the metrics endpoint"),
        "{error}"
    );
}
