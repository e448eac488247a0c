//! One run from the main thread's side: plan the connections, start one pinned load thread per
//! core, wait (bounded) until they are connected, set the common start, print a progress line
//! each second, let in-flight messages drain, stop the threads and add up their figures.
//! Every wait here has a deadline, so an unreachable or stalled broker still ends the run on
//! time, with the failures counted.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use ringmq::protocol::{ProtocolVersion, QoS};
use serde::Serialize;

use crate::cli::{Command, Common, Load, MqttVersion};
use crate::engine::{Shared, ThreadResult, Worker};
use crate::plan::{plan, Mode, Scenario, Settings};
use crate::stamp::monotonic_ns;
use crate::stats::{
    format_rate, format_us, new_histogram, percentile_distribution, rate_per_sec, LatencySummary,
};
use crate::svg::{percentile_plot, Series};
use crate::tls::TlsClient;
use crate::tracker::{lost, SeqTracker};

/// Every figure of a run; written as summary.json.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub label: String,
    pub scenario: String,
    /// The exact command line, shell-quoted.
    pub command: String,
    pub mqtt: String,
    pub qos: u8,
    /// Every publish retained (`--retain`).
    pub retain: bool,
    pub payload_bytes: usize,
    pub mode: String,
    pub rate_target_per_sec: Option<u64>,
    pub inflight_window: Option<u32>,
    pub publishers: u32,
    pub subscribers: u32,
    pub shared_group: Option<String>,
    pub connections_planned: u64,
    pub threads: usize,
    pub cpus: Option<Vec<usize>>,
    pub broker: String,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub connected: u64,
    pub connect_failed: u64,
    pub connect_refused: u64,
    pub subscribe_refused: u64,
    pub dropped: u64,
    pub connect_rate_per_sec: f64,
    pub connect_latency: LatencySummary,
    /// Every connection over TLS (`--tls-ca`).
    pub tls: bool,
    /// What the first TLS handshake agreed on: version, cipher suite, ALPN.
    pub tls_session: Option<String>,
    /// `handshake`: connections through (socket to CONNACK) inside the measured window.
    pub handshakes_in_window: u64,
    pub handshakes_per_sec: f64,
    pub sent: u64,
    pub sent_in_window: u64,
    pub received: u64,
    pub received_in_window: u64,
    /// Copies that should have arrived: sent x subscribers per publisher.
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unexpected: u64,
    pub acked: u64,
    pub window_stalls: u64,
    /// Open loop: times a publisher's due messages were held back by its socket or window
    /// (they left late, stamped with their intended times).
    pub send_stalls: u64,
    pub recv_buffers_exhausted: u64,
    pub msgs_out_per_sec: f64,
    pub msgs_in_per_sec: f64,
    /// Publish to delivery, messages stamped inside the measured window.
    pub latency: LatencySummary,
    /// Open loop: how late messages left after their intended send time. When its p99 is
    /// large, the load generator was saturated and is itself part of `latency`.
    pub send_lag: LatencySummary,
    pub errors: BTreeMap<String, u64>,
    pub loadgen_cpu_secs: f64,
    pub wall_secs: f64,
    /// With `--metrics-url`: what the broker counted over the run.
    pub broker_metrics: Option<crate::scrape::BrokerDelta>,
}

pub struct Report {
    pub summary: Summary,
    pub latency: Histogram<u64>,
    pub connect_latency: Histogram<u64>,
}

struct Scn<'a> {
    scenario: Scenario,
    publishers: u32,
    subscribers: u32,
    shared_group: Option<&'a str>,
    subscribe_idle: bool,
    load: Option<&'a Load>,
    common: &'a Common,
}

fn describe(command: &Command) -> Option<Scn<'_>> {
    Some(match command {
        Command::Conn {
            connections,
            subscribe,
            common,
        } => Scn {
            scenario: Scenario::Conn,
            publishers: 0,
            subscribers: *connections,
            shared_group: None,
            subscribe_idle: *subscribe,
            load: None,
            common,
        },
        Command::Handshake {
            connections,
            common,
        } => Scn {
            scenario: Scenario::Handshake,
            publishers: 0,
            subscribers: *connections,
            shared_group: None,
            subscribe_idle: false,
            load: None,
            common,
        },
        Command::Pairs {
            pairs,
            load,
            common,
        } => Scn {
            scenario: Scenario::Pairs,
            publishers: *pairs,
            subscribers: *pairs,
            shared_group: None,
            subscribe_idle: false,
            load: Some(load),
            common,
        },
        Command::Fanout {
            publishers,
            subscribers,
            load,
            common,
        } => Scn {
            scenario: Scenario::Fanout,
            publishers: *publishers,
            subscribers: *subscribers,
            shared_group: None,
            subscribe_idle: false,
            load: Some(load),
            common,
        },
        Command::Fanin {
            publishers,
            subscribers,
            shared_group,
            load,
            common,
        } => Scn {
            scenario: Scenario::Fanin,
            publishers: *publishers,
            subscribers: *subscribers,
            shared_group: shared_group.as_deref(),
            subscribe_idle: false,
            load: Some(load),
            common,
        },
        Command::Plot { .. } => return None,
    })
}

/// Quotes an argument for a POSIX shell when it needs it.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// Runs a scenario (anything but `plot`) and returns its figures. `argv` is recorded as the
/// command line.
/// How long after the run the broker's page is read again: past its next counter tick.
const BROKER_TICK_WAIT: Duration = Duration::from_millis(1200);

pub fn run(command: &Command, argv: &[String]) -> Result<Report, String> {
    let scn = describe(command).ok_or("plot is not a load scenario")?;
    let common = scn.common;
    let wall_start = monotonic_ns();
    let cpu_start = cpu_secs();
    let threads = common
        .threads
        .or(common.cpus.as_ref().map(|c| c.0.len()))
        .unwrap_or(1)
        .max(1);
    let version = match common.mqtt {
        MqttVersion::V3 => ProtocolVersion::V3_1_1,
        MqttVersion::V5 => ProtocolVersion::V5,
    };
    let retain = scn.load.as_ref().is_some_and(|load| load.retain);
    let (mode, qos, payload_len) = match scn.load {
        None if scn.scenario == Scenario::Handshake => (Mode::Churn, QoS::AtMostOnce, 16),
        None => (Mode::Idle, QoS::AtMostOnce, 16),
        Some(load) => (
            match load.rate {
                Some(rate) => Mode::Rate(rate),
                None => Mode::Max(load.inflight),
            },
            QoS::from_u8(load.qos).ok_or("--qos must be 0, 1 or 2")?,
            load.payload as usize,
        ),
    };
    if !(common.duration > 0.0 && common.warmup >= 0.0 && common.drain >= 0.0) {
        return Err("--duration must be positive, --warmup and --drain not negative".into());
    }
    if common.ramp <= 0.0 || common.connect_timeout <= 0.0 {
        return Err("--ramp and --connect-timeout must be positive".into());
    }
    // Before any load (and before any thread, so a failure stops nothing); the broker's counters are at most a tick (1 s) old.
    let metrics_before = match &common.metrics_url {
        Some(url) => Some(crate::scrape::parse(&crate::scrape::fetch(url)?)),
        None => None,
    };
    let run_id = format!("{:x}{:x}", std::process::id(), wall_start % 0xfff);
    let plans = plan(
        scn.scenario,
        scn.publishers,
        scn.subscribers,
        &common.topic_prefix,
        scn.shared_group,
        scn.subscribe_idle,
        threads,
        &run_id,
    );
    let connections_planned: u64 = plans.iter().map(|p| p.len() as u64).sum();
    let tls = match &common.tls_ca {
        Some(ca) => {
            let name = common
                .tls_server_name
                .clone()
                .unwrap_or_else(|| common.host.to_string());
            Some(TlsClient::new(ca, &common.tls_alpn, &name)?)
        }
        None => None,
    };
    let settings = Arc::new(Settings {
        scenario: scn.scenario,
        version,
        qos,
        retain,
        payload_len,
        keepalive_secs: common.keepalive,
        clean_start: common.clean_session,
        mode,
        broker: SocketAddrV4::new(common.host, common.port),
        sources: common.source.clone().map(|s| s.0).unwrap_or_default(),
        ramp_per_sec: common.ramp / threads as f64,
        handshakes_max: (common.handshakes_max / threads as u32).max(1),
        connect_timeout_ns: (common.connect_timeout * 1e9) as u64,
        publisher_count: scn.publishers,
        shared: scn.shared_group.is_some(),
        ring_files_max: common.ring_files_max,
        tls,
        progress: !common.quiet,
    });
    let shared = Arc::new(Shared::new(threads, scn.publishers));

    let (built_tx, built_rx) = mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::with_capacity(threads);
    for (me, thread_plans) in plans.into_iter().enumerate() {
        let settings = Arc::clone(&settings);
        let shared = Arc::clone(&shared);
        let built_tx = built_tx.clone();
        let cpu = common.cpus.as_ref().map(|cpus| cpus.0[me % cpus.0.len()]);
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{me}"))
            .spawn(move || -> Option<ThreadResult> {
                if let Some(id) = cpu {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                        eprintln!("warning: could not pin load thread {me} to cpu {id}");
                    }
                }
                match Worker::new(me, thread_plans, settings, Arc::clone(&shared)) {
                    Ok(worker) => {
                        let _ = built_tx.send(Ok(()));
                        Some(worker.run())
                    }
                    Err(e) => {
                        shared.threads[me].ready.store(true, Ordering::Release);
                        let _ = built_tx.send(Err(format!("load thread {me}: {e}")));
                        None
                    }
                }
            })
            .map_err(|e| format!("cannot start a load thread: {e}"))?;
        handles.push(handle);
    }
    drop(built_tx);
    let mut build_error = None;
    for _ in 0..threads {
        match built_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => build_error = Some(e),
            Err(_) => build_error = Some("a load thread did not start within 10 s".into()),
        }
    }
    if let Some(e) = build_error {
        shared.stop.store(true, Ordering::Release);
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }

    let mut progress = Progress::new(wall_start, common.quiet, connections_planned);
    // Connect phase: until every thread is connected, or the ramp plus the connect timeout
    // (plus a second) has passed.
    let connect_deadline = wall_start
        + ((connections_planned as f64 / common.ramp + common.connect_timeout + 1.0) * 1e9) as u64;
    loop {
        let now = monotonic_ns();
        let all_ready = shared
            .threads
            .iter()
            .all(|t| t.ready.load(Ordering::Acquire));
        if all_ready || now >= connect_deadline {
            break;
        }
        progress.tick(&shared, now);
        std::thread::sleep(Duration::from_millis(10));
    }
    let start_ns = monotonic_ns() + 20_000_000;
    let measure_start_ns = start_ns + (common.warmup * 1e9) as u64;
    let end_ns = measure_start_ns + (common.duration * 1e9) as u64;
    shared
        .measure_start_ns
        .store(measure_start_ns, Ordering::Relaxed);
    shared.end_ns.store(end_ns, Ordering::Relaxed);
    shared.start_ns.store(start_ns, Ordering::Release);
    let mut ready_written = false;
    loop {
        let now = monotonic_ns();
        if now >= end_ns {
            break;
        }
        if !ready_written && now >= measure_start_ns {
            ready_written = true;
            if let Some(path) = &common.ready_file {
                if let Err(e) = std::fs::write(path, b"measuring\n") {
                    eprintln!("warning: cannot write --ready-file {}: {e}", path.display());
                }
            }
        }
        progress.tick(&shared, now);
        std::thread::sleep(Duration::from_millis(10).min(Duration::from_nanos(end_ns - now)));
    }
    // Drain: messages still in flight get up to --drain seconds. Stop early only once every
    // expected copy has arrived (sent x subscribers per message, if all subscribed) and
    // nothing has moved for 200 ms; a slow or stalled broker gets the whole drain.
    if !matches!(scn.scenario, Scenario::Conn | Scenario::Handshake) {
        let copies = match (scn.scenario, scn.shared_group) {
            (Scenario::Pairs, _) | (Scenario::Fanin, Some(_)) => 1,
            _ => u64::from(scn.subscribers),
        };
        let drain_deadline = end_ns + (common.drain * 1e9) as u64;
        let mut last = (u64::MAX, u64::MAX);
        let mut still_since = monotonic_ns();
        loop {
            let now = monotonic_ns();
            if now >= drain_deadline {
                break;
            }
            let totals = shared.threads.iter().fold((0, 0), |(s, r), t| {
                (
                    s + t.sent.load(Ordering::Relaxed),
                    r + t.received.load(Ordering::Relaxed),
                )
            });
            if totals != last {
                last = totals;
                still_since = now;
            } else if totals.1 >= totals.0 * copies && now - still_since > 200_000_000 {
                break;
            }
            progress.tick(&shared, now);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    shared.stop.store(true, Ordering::Release);
    let results: Vec<ThreadResult> = handles
        .into_iter()
        .filter_map(|h| h.join().ok().flatten())
        .collect();
    if results.len() != threads {
        return Err("a load thread panicked".into());
    }
    let broker_metrics = match (&common.metrics_url, metrics_before) {
        (Some(url), Some(before)) => {
            // ringmq publishes its counters once a second: wait for a tick past the last
            // message (outside the figures; `wall_secs` includes it).
            std::thread::sleep(BROKER_TICK_WAIT);
            let after = crate::scrape::parse(&crate::scrape::fetch(url)?);
            Some(crate::scrape::delta(url, &before, &after))
        }
        _ => None,
    };
    let wall_secs = (monotonic_ns() - wall_start) as f64 / 1e9;
    let duration_ns = end_ns - measure_start_ns;
    let mut report = aggregate(&results, scn.publishers, settings.shared, duration_ns);
    let s = &mut report.summary;
    s.label = common
        .label
        .clone()
        .unwrap_or_else(|| scn.scenario.name().to_string());
    s.scenario = scn.scenario.name().into();
    s.command = argv
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    s.mqtt = match common.mqtt {
        MqttVersion::V3 => "3.1.1".into(),
        MqttVersion::V5 => "5.0".into(),
    };
    s.qos = qos as u8;
    s.retain = retain;
    s.payload_bytes = payload_len;
    (s.mode, s.rate_target_per_sec, s.inflight_window) = match mode {
        Mode::Idle => ("idle".into(), None, None),
        Mode::Rate(r) => ("rate".into(), Some(r), None),
        Mode::Max(w) => ("max".into(), None, Some(w)),
        Mode::Churn => ("churn".into(), None, None),
    };
    s.tls = settings.tls.is_some();
    s.publishers = scn.publishers;
    s.subscribers = scn.subscribers;
    s.shared_group = scn.shared_group.map(str::to_string);
    s.connections_planned = connections_planned;
    s.threads = threads;
    s.cpus = common.cpus.clone().map(|c| c.0);
    s.broker = settings.broker.to_string();
    s.warmup_secs = common.warmup;
    s.duration_secs = common.duration;
    s.loadgen_cpu_secs = cpu_secs() - cpu_start;
    s.wall_secs = wall_secs;
    s.broker_metrics = broker_metrics;
    Ok(report)
}

/// Adds up the threads' figures. Loss per publisher: sent x receivers that subscribed to it
/// (one for a shared group) minus the distinct messages they got.
pub fn aggregate(
    results: &[ThreadResult],
    publishers: u32,
    shared_group: bool,
    duration_ns: u64,
) -> Report {
    let n = publishers as usize;
    let mut sent = vec![0u64; n];
    let mut receivers = vec![0u64; n];
    let mut trackers = vec![SeqTracker::default(); n];
    let mut latency = new_histogram();
    let mut send_lag = new_histogram();
    let mut connect_latency = new_histogram();
    let mut errors = BTreeMap::new();
    let mut first_connect_ns = u64::MAX;
    let mut last_ready_ns = 0;
    let sum = |f: fn(&ThreadResult) -> u64| results.iter().map(f).sum::<u64>();
    let connected = sum(|r| r.connected);
    let connect_failed = sum(|r| r.connect_failed);
    let connect_refused = sum(|r| r.refused);
    let subscribe_refused = sum(|r| r.subscribe_refused);
    let dropped = sum(|r| r.dropped);
    let sent_in_window = sum(|r| r.sent_in_window);
    let received = sum(|r| r.received);
    let received_in_window = sum(|r| r.received_in_window);
    let unexpected = sum(|r| r.unexpected);
    let acked = sum(|r| r.acked);
    let window_stalls = sum(|r| r.window_stalls);
    let send_stalls = sum(|r| r.send_stalls);
    let recv_buffers_exhausted = sum(|r| r.recv_buffers_exhausted);
    let handshakes_in_window = sum(|r| r.handshakes_in_window);
    for r in results {
        let _ = latency.add(&r.latency);
        let _ = send_lag.add(&r.send_lag);
        let _ = connect_latency.add(&r.connect_latency);
        for &(p, count) in &r.sent {
            if let Some(s) = sent.get_mut(p as usize) {
                *s += count;
            }
        }
        for &(first, count) in &r.receivers {
            for p in first..first.saturating_add(count) {
                if let Some(slot) = receivers.get_mut(p as usize) {
                    *slot += 1;
                }
            }
        }
        for (p, t) in &r.trackers {
            if let Some(slot) = trackers.get_mut(*p as usize) {
                slot.merge(t);
            }
        }
        for (text, count) in &r.errors {
            if !text.is_empty() {
                *errors.entry(text.clone()).or_insert(0) += count;
            }
        }
        if r.first_connect_ns != 0 {
            first_connect_ns = first_connect_ns.min(r.first_connect_ns);
        }
        last_ready_ns = last_ready_ns.max(r.last_ready_ns);
    }
    if shared_group {
        for r in receivers.iter_mut() {
            *r = (*r).min(1);
        }
    }
    let expected = (0..n).map(|p| sent[p] * receivers[p]).sum();
    let lost_total = (0..n)
        .map(|p| lost(sent[p], receivers[p], trackers[p].unique))
        .sum();
    let connect_span = last_ready_ns.saturating_sub(first_connect_ns);
    let summary = Summary {
        broker_metrics: None,
        label: String::new(),
        scenario: String::new(),
        command: String::new(),
        mqtt: String::new(),
        qos: 0,
        retain: false,
        payload_bytes: 0,
        mode: String::new(),
        rate_target_per_sec: None,
        inflight_window: None,
        publishers,
        subscribers: 0,
        shared_group: None,
        connections_planned: 0,
        threads: results.len(),
        cpus: None,
        broker: String::new(),
        warmup_secs: 0.0,
        duration_secs: duration_ns as f64 / 1e9,
        connected,
        connect_failed,
        connect_refused,
        subscribe_refused,
        dropped,
        connect_rate_per_sec: if connected > 1 {
            rate_per_sec(connected, connect_span)
        } else {
            0.0
        },
        connect_latency: LatencySummary::of(&connect_latency),
        tls: false,
        tls_session: results.iter().find_map(|r| r.tls_session.clone()),
        handshakes_in_window,
        handshakes_per_sec: rate_per_sec(handshakes_in_window, duration_ns),
        sent: sent.iter().sum(),
        sent_in_window,
        received,
        received_in_window,
        expected,
        lost: lost_total,
        duplicates: trackers.iter().map(|t| t.duplicates).sum(),
        reordered: trackers.iter().map(|t| t.reordered).sum(),
        unexpected,
        acked,
        window_stalls,
        send_stalls,
        recv_buffers_exhausted,
        msgs_out_per_sec: rate_per_sec(sent_in_window, duration_ns),
        msgs_in_per_sec: rate_per_sec(received_in_window, duration_ns),
        latency: LatencySummary::of(&latency),
        send_lag: LatencySummary::of(&send_lag),
        errors,
        loadgen_cpu_secs: 0.0,
        wall_secs: 0.0,
    };
    Report {
        summary,
        latency,
        connect_latency,
    }
}

/// The line printed each second (to stderr, so stdout carries only the summary).
struct Progress {
    start_ns: u64,
    next_ns: u64,
    quiet: bool,
    planned: u64,
    last_sent: u64,
    last_received: u64,
    last_ns: u64,
}

impl Progress {
    fn new(start_ns: u64, quiet: bool, planned: u64) -> Progress {
        Progress {
            start_ns,
            next_ns: start_ns + 1_000_000_000,
            quiet,
            planned,
            last_sent: 0,
            last_received: 0,
            last_ns: start_ns,
        }
    }

    fn tick(&mut self, shared: &Shared, now: u64) {
        if now < self.next_ns {
            return;
        }
        self.next_ns += 1_000_000_000;
        let mut interval = new_histogram();
        let (mut connected, mut failed, mut sent, mut received) = (0, 0, 0, 0);
        for t in &shared.threads {
            connected += t.connected.load(Ordering::Relaxed);
            failed += t.failed.load(Ordering::Relaxed);
            sent += t.sent.load(Ordering::Relaxed);
            received += t.received.load(Ordering::Relaxed);
            if let Ok(mut h) = t.interval.lock() {
                let _ = interval.add(&*h);
                h.reset();
            }
        }
        let span = now - self.last_ns;
        let out = rate_per_sec(sent - self.last_sent, span);
        let inn = rate_per_sec(received - self.last_received, span);
        (self.last_sent, self.last_received, self.last_ns) = (sent, received, now);
        if self.quiet {
            return;
        }
        let p99 = if interval.is_empty() {
            "-".to_string()
        } else {
            format_us(interval.value_at_quantile(0.99) as f64 / 1e3)
        };
        eprintln!(
            "[{:>4.0}s] conns {connected}/{} ({failed} failed)  out {}/s  in {}/s  p99 {p99}",
            (now - self.start_ns) as f64 / 1e9,
            self.planned,
            format_rate(out),
            format_rate(inn),
        );
    }
}

/// The human summary printed at the end.
pub fn human_summary(s: &Summary) -> String {
    let mut out = String::new();
    let l = &s.latency;
    out.push_str(&format!(
        "== {} ({}, MQTT {}, QoS {}{}, {} B payload, {} threads)\n",
        s.label,
        s.scenario,
        s.mqtt,
        s.qos,
        if s.retain { ", retained" } else { "" },
        s.payload_bytes,
        s.threads
    ));
    out.push_str(&format!(
        "connections: {} of {} up, {} failed ({} refused, {} subscribe refused), {} dropped; \
         {} conn/s; connect p50 {} p99 {}\n",
        s.connected,
        s.connections_planned,
        s.connect_failed,
        s.connect_refused,
        s.subscribe_refused,
        s.dropped,
        format_rate(s.connect_rate_per_sec),
        format_us(s.connect_latency.p50_us),
        format_us(s.connect_latency.p99_us),
    ));
    if let Some(session) = &s.tls_session {
        out.push_str(&format!("TLS: {session}\n"));
    }
    if s.scenario == "handshake" {
        out.push_str(&format!(
            "handshakes: {} in {:.1} s measured, {} per second\n",
            s.handshakes_in_window,
            s.duration_secs,
            format_rate(s.handshakes_per_sec)
        ));
    } else if s.scenario != "conn" {
        let mode = match (s.rate_target_per_sec, s.inflight_window) {
            (Some(r), _) => format!("open loop at {r} msgs/s"),
            (_, Some(w)) => format!("closed loop, window {w}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{mode}: out {} msgs/s, in {} msgs/s over {:.1} s\n",
            format_rate(s.msgs_out_per_sec),
            format_rate(s.msgs_in_per_sec),
            s.duration_secs
        ));
        out.push_str(&format!(
            "latency: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} ({} samples)\n",
            format_us(l.p50_us),
            format_us(l.p90_us),
            format_us(l.p99_us),
            format_us(l.p99_9_us),
            format_us(l.p99_99_us),
            format_us(l.max_us),
            l.count
        ));
        if s.rate_target_per_sec.is_some() {
            let lag = &s.send_lag;
            out.push_str(&format!(
                "send lag (left after the intended time): p50 {} p99 {} max {}\n",
                format_us(lag.p50_us),
                format_us(lag.p99_us),
                format_us(lag.max_us)
            ));
            if lag.p99_us > 1_000.0 {
                out.push_str(
                    "warning: the load generator sent late (send lag p99 over 1 ms): it is \
                     part of these latencies; give it more cores (--cpus) or a lower rate\n",
                );
            }
        }
        out.push_str(&format!(
            "messages: {} sent, {} received of {} expected; lost {}, duplicates {}, reordered {}, \
             unexpected {}\n",
            s.sent, s.received, s.expected, s.lost, s.duplicates, s.reordered, s.unexpected
        ));
    }
    if let Some(broker) = &s.broker_metrics {
        out.push_str(&crate::scrape::summary_line(broker, s.lost));
    }
    for (text, count) in &s.errors {
        out.push_str(&format!("error x{count}: {text}\n"));
    }
    out.push_str(&format!(
        "load generator CPU {:.2} s over {:.1} s wall\n",
        s.loadgen_cpu_secs, s.wall_secs
    ));
    out
}

/// Writes summary.json, latency.hgrm, connect.hgrm and latency.svg into `dir`.
pub fn write_outputs(dir: &Path, report: &Report) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let json = serde_json::to_string_pretty(&report.summary).map_err(|e| e.to_string())?;
    write("summary.json", &(json + "\n"))?;
    // The conn scenario's latency is the time to connect.
    let latency = if report.summary.scenario == "conn" {
        &report.connect_latency
    } else {
        &report.latency
    };
    let hgrm = percentile_distribution(latency, 1_000.0);
    write("latency.hgrm", &hgrm)?;
    write(
        "connect.hgrm",
        &percentile_distribution(&report.connect_latency, 1_000.0),
    )?;
    let series = [Series {
        label: report.summary.label.clone(),
        points: crate::stats::parse_percentile_distribution(&hgrm),
    }];
    let title = format!("{} {}", report.summary.label, report.summary.scenario);
    write("latency.svg", &percentile_plot(&title, &series))?;
    Ok(())
}

/// `plot`: one SVG with the latency curve of each run folder.
pub fn plot(out: &Path, title: &str, runs: &[PathBuf]) -> Result<(), String> {
    let mut series = Vec::new();
    for dir in runs {
        let hgrm_path = dir.join("latency.hgrm");
        let text = std::fs::read_to_string(&hgrm_path)
            .map_err(|e| format!("cannot read {}: {e}", hgrm_path.display()))?;
        let label = std::fs::read_to_string(dir.join("summary.json"))
            .ok()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .and_then(|v| v.get("label").and_then(|l| l.as_str()).map(str::to_string))
            .unwrap_or_else(|| {
                dir.file_name().map_or_else(
                    || dir.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                )
            });
        series.push(Series {
            label,
            points: crate::stats::parse_percentile_distribution(&text),
        });
    }
    std::fs::write(out, percentile_plot(title, &series))
        .map_err(|e| format!("cannot write {}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("--rate"), "--rate");
        assert_eq!(shell_quote("$share/g/t"), "'$share/g/t'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
