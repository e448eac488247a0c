//! The command line. Scenario names follow the Open MQTT Benchmark Suite (mqttbs) so figures
//! line up with its published table: `conn` (conn-tcp), `pairs` (p2p), `fanout`, `fanin`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ringmq-loadgen",
    version,
    about = "Open- and closed-loop MQTT 3.1.1 / 5.0 load generator on io_uring",
    after_help = "Examples:\n  ringmq-loadgen pairs -n 100 --qos 1 --max --inflight 100 --duration 10\n  ringmq-loadgen fanin --publishers 8 --subscribers 1 --rate 50000 --out results/x\n  ringmq-loadgen conn -n 19000 --subscribe --ramp 5000 --duration 30\n  ringmq-loadgen handshake -n 16 --port 8883 --tls-ca ca.pem --duration 10\n  ringmq-loadgen plot --out cmp.svg results/a results/b"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Open N connections at --ramp per second and hold them with keepalive (mqttbs conn-tcp).
    Conn {
        /// Connections to open.
        #[arg(short = 'n', long, default_value_t = 1000)]
        connections: u32,
        /// Each connection subscribes to a topic of its own once connected (idle subscribers).
        #[arg(long)]
        subscribe: bool,
        #[command(flatten)]
        common: Common,
    },
    /// N clients connect (with --tls-ca: TLS handshake, then CONNECT/CONNACK), disconnect and
    /// connect again, over and over while measuring: handshakes per second.
    Handshake {
        /// Clients connecting at once (each reconnects as soon as it is through).
        #[arg(short = 'n', long, default_value_t = 16)]
        connections: u32,
        #[command(flatten)]
        common: Common,
    },
    /// N publishers -> N subscribers, one topic per pair (mqttbs p2p).
    Pairs {
        /// Publisher/subscriber pairs.
        #[arg(short = 'n', long, default_value_t = 100)]
        pairs: u32,
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        common: Common,
    },
    /// P publishers and S subscribers on one topic: every subscriber gets every message.
    Fanout {
        #[arg(long, default_value_t = 1)]
        publishers: u32,
        #[arg(long, default_value_t = 100)]
        subscribers: u32,
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        common: Common,
    },
    /// P publishers, one topic each, S subscribers on a wildcard over them.
    Fanin {
        #[arg(long, default_value_t = 8)]
        publishers: u32,
        #[arg(long, default_value_t = 1)]
        subscribers: u32,
        /// Subscribe as `$share/GROUP/...`: each message goes to one of the subscribers.
        #[arg(long, value_name = "GROUP")]
        shared_group: Option<String>,
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        common: Common,
    },
    /// Draw the latency percentile curves of several runs (their latency.hgrm) on one SVG.
    Plot {
        /// The SVG file to write.
        #[arg(long)]
        out: PathBuf,
        /// Title above the plot.
        #[arg(long, default_value = "latency by percentile")]
        title: String,
        /// Run folders written by --out (each with latency.hgrm, and summary.json for a label).
        #[arg(required = true, value_name = "RUN_DIR")]
        runs: Vec<PathBuf>,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1
    #[value(name = "3", alias = "3.1.1", alias = "4")]
    V3,
    /// MQTT 5.0
    #[value(name = "5", alias = "5.0")]
    V5,
}

/// How publishers are paced.
#[derive(Args, Debug, Clone)]
pub struct Load {
    /// QoS of every publish and subscription.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes per message; the first 16 are the stamp.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub payload: u32,
    /// Every publish retained: each topic's message replaces the last one the broker keeps
    /// (a "last known value per device" load; subscribers get retain 0 on live delivery).
    #[arg(long)]
    pub retain: bool,
    /// Open loop: messages per second over all publishers, each sent at its intended time;
    /// latency counts from that time (no coordinated omission).
    #[arg(long, value_name = "MSGS_PER_SEC", required_unless_present = "max", conflicts_with = "max",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Closed loop: as fast as the window allows (--inflight per publisher).
    #[arg(long)]
    pub max: bool,
    /// Closed-loop window per publisher: unacknowledged messages for QoS 1/2; for QoS 0,
    /// messages sent but not yet received back by any of its subscribers.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub inflight: u32,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// MQTT version: 3 (3.1.1) or 5.
    #[arg(long, alias = "mqtt-version", value_enum, default_value = "3")]
    pub mqtt: MqttVersion,
    /// Broker host (an IPv4 address).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: Ipv4Addr,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Topic prefix; topics are PREFIX/pair/N, PREFIX/fanout, PREFIX/fanin/N, PREFIX/idle/N.
    #[arg(long, default_value = "ringmq-bench")]
    pub topic_prefix: String,
    /// Clean session (3.1.1) / clean start (5).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub clean_session: bool,
    /// Keepalive seconds in CONNECT; idle connections ping at half of it.
    #[arg(long, default_value_t = 60)]
    pub keepalive: u16,
    /// Seconds of load before measuring starts (not in the figures).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Connections opened per second (keep the handshakes in flight under the listen backlog).
    #[arg(long, value_name = "CONNS_PER_SEC", default_value_t = 5000.0)]
    pub ramp: f64,
    /// Handshakes (CONNECT to CONNACK/SUBACK) in flight at most, over all threads.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub handshakes_max: u32,
    /// Seconds a connection may take from socket to CONNACK (and SUBACK) before it counts as
    /// a connect error.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds to wait after the run for messages still in flight before counting them lost.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Load threads (each with its own io_uring); default: one per --cpus entry, else 1.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cores to pin the threads to, e.g. "0" or "0,2-3"; thread i runs on entry i mod len.
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<CpuList>,
    /// Source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.40 (more than
    /// ~28k connections to one broker port need several).
    #[arg(long, value_parser = parse_sources)]
    pub source: Option<SourceList>,
    /// Folder to write summary.json, latency.hgrm and latency.svg into.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Name of this run in summaries and plots (e.g. the broker's name).
    #[arg(long)]
    pub label: Option<String>,
    /// File created when measuring starts (after connecting and warm-up), for scripts that
    /// sample the broker then.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Connections per io_uring fixed-file table; a thread with more drives several rings.
    /// 0: the open-file limit minus a headroom (the kernel's cap).
    #[arg(long, default_value_t = 0)]
    pub ring_files_max: u32,
    /// The broker's Prometheus endpoint, e.g. http://127.0.0.1:9100/metrics: read before and
    /// after the run, and the broker's received, sent and dropped (by cause) counts printed
    /// beside the client-side loss (and kept in summary.json).
    #[arg(long, value_name = "URL")]
    pub metrics_url: Option<String>,
    /// Speak TLS on every connection, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// ALPN protocol offered with --tls-ca ("" offers none).
    #[arg(long, default_value = "mqtt", requires = "tls_ca")]
    pub tls_alpn: String,
    /// Name the broker's certificate must hold (default: --host, an IP address SAN).
    #[arg(long, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// No progress lines.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// A list of cores (one value on the command line, so clap must not see a Vec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// A list of source addresses, as `CpuList`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceList(pub Vec<Ipv4Addr>);

fn parse_cpus(text: &str) -> Result<CpuList, String> {
    cpu_list(text).map(CpuList)
}

fn parse_sources(text: &str) -> Result<SourceList, String> {
    source_list(text).map(SourceList)
}

/// "0,2-3" -> [0, 2, 3].
pub fn cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let lo: usize = lo
            .trim()
            .parse()
            .map_err(|_| format!("bad cpu number in {part:?}"))?;
        let hi: usize = hi
            .trim()
            .parse()
            .map_err(|_| format!("bad cpu number in {part:?}"))?;
        if hi < lo || hi - lo > 4096 {
            return Err(format!("bad cpu range {part:?}"));
        }
        cpus.extend(lo..=hi);
    }
    if cpus.is_empty() {
        return Err("empty cpu list".into());
    }
    Ok(cpus)
}

/// "127.0.0.2-127.0.0.40" or "127.0.0.2,127.0.0.3" -> the addresses.
pub fn source_list(text: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut sources = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("bad IPv4 address {s:?}"))
        };
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (parse(lo)?, parse(hi)?),
            None => (parse(part)?, parse(part)?),
        };
        let (lo, hi) = (u32::from(lo), u32::from(hi));
        if hi < lo || hi - lo > 65_535 {
            return Err(format!("bad address range {part:?}"));
        }
        sources.extend((lo..=hi).map(Ipv4Addr::from));
    }
    if sources.is_empty() {
        return Err("empty source address list".into());
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list("0").unwrap(), [0]);
        assert_eq!(cpu_list("0,2-3").unwrap(), [0, 2, 3]);
        assert!(cpu_list("3-1").is_err());
        assert!(cpu_list("x").is_err());
        assert!(cpu_list("").is_err());
    }

    #[test]
    fn source_ranges() {
        let s = source_list("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(
            s,
            ["127.0.0.2", "127.0.0.3", "127.0.0.4"].map(|a| a.parse::<Ipv4Addr>().unwrap())
        );
        assert_eq!(source_list("127.0.0.9").unwrap().len(), 1);
        assert_eq!(source_list("127.0.0.255-127.0.1.1").unwrap().len(), 3);
        assert!(source_list("127.0.0.4-127.0.0.2").is_err());
        assert!(source_list("localhost").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "lg",
            "conn",
            "--cpus",
            "0,1",
            "--source",
            "127.0.0.2-127.0.0.3",
        ])
        .unwrap();
        let Command::Conn { common, .. } = cli.command else {
            panic!("not conn")
        };
        assert_eq!(common.cpus, Some(CpuList(vec![0, 1])));
        assert_eq!(common.source.map(|s| s.0.len()), Some(2));
    }

    #[test]
    fn bad_arguments_are_clap_errors() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(parse(&["lg", "pairs", "--max"]).is_ok());
        assert!(parse(&["lg", "pairs"]).is_err(), "a load mode is required");
        assert!(
            parse(&["lg", "pairs", "--max", "--rate", "5"]).is_err(),
            "modes conflict"
        );
        assert!(parse(&["lg", "pairs", "--max", "--qos", "3"]).is_err());
        assert!(parse(&["lg", "pairs", "--max", "--payload", "15"]).is_err());
        assert!(parse(&["lg", "pairs", "--max", "--mqtt", "4.5"]).is_err());
        assert!(parse(&["lg", "fanin", "--rate", "0"]).is_err());
        assert!(parse(&["lg", "conn", "--cpus", "a"]).is_err());
        assert!(
            parse(&["lg", "plot", "--out", "x.svg"]).is_err(),
            "needs run folders"
        );
        let cli = parse(&[
            "lg",
            "fanin",
            "--rate",
            "10",
            "--mqtt",
            "5",
            "--shared-group",
            "g",
        ])
        .unwrap();
        match cli.command {
            Command::Fanin {
                shared_group,
                load,
                common,
                ..
            } => {
                assert_eq!(shared_group.as_deref(), Some("g"));
                assert_eq!(load.rate, Some(10));
                assert_eq!(common.mqtt, MqttVersion::V5);
                assert!(common.clean_session);
            }
            other => panic!("parsed as {other:?}"),
        }
        // Issue 8 names the flag `--mqtt-version`: the same setting.
        match parse(&["lg", "pairs", "--max", "--mqtt-version", "5"])
            .unwrap()
            .command
        {
            Command::Pairs { common, .. } => assert_eq!(common.mqtt, MqttVersion::V5),
            other => panic!("parsed as {other:?}"),
        }
    }
}
