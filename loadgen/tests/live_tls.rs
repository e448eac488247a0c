//! The load generator over TLS (`--tls-ca`) against the real ringmq broker with an `mqtt+tls`
//! listener, started in this process on ephemeral loopback ports, and the `handshake`
//! scenario over TLS and plain TCP. The CA and server certificate are made at test time with
//! rcgen (tests/common/pki.rs of the broker, shared by path).

mod common;
#[path = "../../tests/common/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pki::{make_ca, server_cert};
use ringmq::broker::Broker;
use ringmq::config::{Config, ListenerConfig, ListenerProtocol};

/// A folder of PEM files, removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    /// ca.pem, server.pem / server.key (for 127.0.0.1 and localhost), other-ca.pem.
    fn new(tag: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("ringmq-loadgen-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (ca, ca_key) = make_ca("loadgen test CA");
        let (server, server_key) = server_cert(&ca, &ca_key);
        let (other_ca, _) = make_ca("some other CA");
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server.pem()),
            ("server.key", server_key.serialize_pem()),
            ("other-ca.pem", other_ca.pem()),
        ] {
            std::fs::write(dir.join(name), pem).expect("write pem");
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("utf-8").to_string()
    }
}

/// One shard, a plain listener and an `mqtt+tls` one; returns (broker, plain, tls).
fn start_broker(pki: &Pki) -> (Broker, SocketAddr, SocketAddr) {
    let broker = Broker::start(Config {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        listener: vec![ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::MqttTls,
            certfile: Some(Path::new(&pki.path("server.pem")).to_path_buf()),
            keyfile: Some(Path::new(&pki.path("server.key")).to_path_buf()),
            ..ListenerConfig::default()
        }],
        shards: 1,
        ring_files_max: 1024,
        ..Default::default()
    })
    .expect("the broker starts");
    let addrs = broker.listener_addrs().to_vec();
    assert_eq!(addrs.len(), 2, "listen and one [[listener]]");
    (broker, addrs[0], addrs[1])
}

#[test]
fn pairs_over_tls_count_exactly() {
    let pki = Pki::new("pairs");
    let (broker, _, tls) = start_broker(&pki);
    let port = tls.port().to_string();
    let ca = pki.path("ca.pem");
    for qos in ["0", "1"] {
        let report = common::loadgen(&[
            "pairs",
            "-n",
            "3",
            "--qos",
            qos,
            "--rate",
            "1200",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--drain",
            "2",
            "--port",
            &port,
            "--tls-ca",
            &ca,
            "-q",
        ]);
        let s = &report.summary;
        assert_eq!(s.connect_failed, 0, "{:?}", s.errors);
        assert_eq!(s.connected, 6);
        assert!(s.tls);
        let session = s.tls_session.as_deref().unwrap_or_default();
        assert!(
            session.starts_with("TLSv1_3") && session.ends_with("mqtt"),
            "{session}"
        );
        assert_eq!(s.sent, 600, "QoS {qos}");
        assert_eq!(s.received, 600, "QoS {qos}");
        assert_eq!((s.lost, s.duplicates, s.reordered, s.dropped), (0, 0, 0, 0));
        if qos == "1" {
            assert_eq!(s.acked, 600);
        }
    }
    broker.stop().expect("no shard failed");
}

#[test]
fn handshakes_repeat_over_tls_and_plain() {
    let pki = Pki::new("handshake");
    let (broker, plain, tls) = start_broker(&pki);
    let ca = pki.path("ca.pem");
    for (port, tls_args) in [
        (tls.port(), vec!["--tls-ca", ca.as_str()]),
        (plain.port(), vec![]),
    ] {
        let port = port.to_string();
        let mut args = vec![
            "handshake",
            "-n",
            "4",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--port",
            &port,
            "-q",
        ];
        args.extend(tls_args.iter().copied());
        let report = common::loadgen(&args);
        let s = &report.summary;
        assert_eq!(s.scenario, "handshake");
        assert_eq!(s.connect_failed, 0, "{:?}", s.errors);
        assert_eq!(s.dropped, 0, "{:?}", s.errors);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        // Each of the 4 clients goes through many times; each time counts once.
        assert!(
            s.handshakes_in_window > 8,
            "{} handshakes",
            s.handshakes_in_window
        );
        assert!(s.connected > s.handshakes_in_window);
        assert!(s.handshakes_per_sec > 0.0);
        assert_eq!(s.tls, !tls_args.is_empty());
        assert_eq!(s.tls_session.is_some(), s.tls);
    }
    broker.stop().expect("no shard failed");
}

#[test]
fn a_certificate_from_another_ca_is_a_counted_connect_failure() {
    let pki = Pki::new("badca");
    let (broker, _, tls) = start_broker(&pki);
    let port = tls.port().to_string();
    let other = pki.path("other-ca.pem");
    let report = common::loadgen(&[
        "conn",
        "-n",
        "2",
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "--connect-timeout",
        "2",
        "--port",
        &port,
        "--tls-ca",
        &other,
        "-q",
    ]);
    let s = &report.summary;
    assert_eq!(s.connected, 0);
    assert_eq!(s.connect_failed, 2);
    assert!(
        s.errors.keys().any(|e| e.contains("certificate")),
        "{:?}",
        s.errors
    );
    broker.stop().expect("no shard failed");
}
