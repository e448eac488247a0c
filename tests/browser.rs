//! MQTT over WebSocket as users really use it (issue 9): a web page. MQTT.js (the browser
//! bundle vendored in tests/fixtures/browser/, see its README) runs in headless Chromium and
//! connects to a `wss` listener (3.1.1 and 5.0) and a `ws` one (3.1.1 and 5.0); each of its
//! connections subscribes, announces itself and echoes what it receives
//! (tests/fixtures/browser/page.html). The test judges the page through an independent client
//! (rumqttc over plain TCP: the page's publishes arrive, intact, and what it publishes to the
//! page comes back) and through the page's own console reports, which Chromium logs.
//!
//! The CA and server certificate are made at test time (tests/common/pki.rs); the listener's
//! `certfile` holds the chain (server, then CA) and Chromium trusts the test CA's key alone
//! (`--ignore-certificate-errors-spki-list` with the SHA-256 of its SubjectPublicKeyInfo, the
//! one way to add a trust anchor by flag); without that pin Chromium refuses the certificate.
//!
//! Chromium comes from tests/setup.sh (Debian's `chromium-headless-shell`, or `chromium`);
//! `RINGMQ_CHROMIUM=/path/to/chrome` picks another. Without one the tests fail and say so,
//! unless `RINGMQ_SKIP_BROWSER=1`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use common::pki::{make_ca, server_cert};
use common::*;
use ringmq::config::{ListenerConfig, ListenerProtocol};
use rumqttc::QoS;
use sha2::{Digest, Sha256};

/// How long Chromium may take to start and load the page, on two busy cores.
const BROWSER_WAIT: Duration = Duration::from_secs(20);

/// A payload past 64 KiB, so frames both ways take the 8-byte extended length.
const PAYLOAD_BYTES: usize = 70_000;

// ---------------------------------------------------------------------------------------------
// Chromium
// ---------------------------------------------------------------------------------------------

/// The Chromium to run: `RINGMQ_CHROMIUM`, else the first of the names Debian and others use.
/// `None` only when it is missing and `RINGMQ_SKIP_BROWSER=1`; otherwise missing is a failure.
fn chromium_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RINGMQ_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    // The binaries themselves before /usr/bin's wrapper scripts (one process fewer to kill).
    let fixed = [
        "/usr/lib/chromium/chromium-headless-shell",
        "/usr/lib/chromium/chromium",
    ];
    let names = [
        "chromium-headless-shell",
        "chrome-headless-shell",
        "chromium",
        "google-chrome",
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = fixed
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| {
            names.iter().find_map(|name| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() && std::env::var("RINGMQ_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("browser test skipped: no Chromium and RINGMQ_SKIP_BROWSER=1");
        return None;
    }
    Some(found.unwrap_or_else(|| {
        panic!(
            "no Chromium found (chromium-headless-shell, chromium): run tests/setup.sh \
             (installs chromium-headless-shell), set RINGMQ_CHROMIUM=/path/to/chrome, or \
             RINGMQ_SKIP_BROWSER=1 to skip the browser test"
        )
    }))
}

/// Headless Chromium showing one page, in its own process group (its zygote, renderer and
/// GPU processes with it), killed as a group when dropped. Its log (stderr) is read on a
/// thread; the page's `console.log` lines reach it as `...:CONSOLE...] "text", source: ...`.
struct Chromium {
    child: Child,
    log: Receiver<String>,
    /// The page's reports so far (the text after "RINGMQ "), for the failure messages.
    reports: Vec<String>,
    _profile: TempDir,
}

impl Chromium {
    fn open(binary: &Path, page: &Path, trusted_spki: &str) -> Chromium {
        let profile = TempDir::new("chromium-profile");
        let mut child = Command::new(binary)
            .args([
                "--headless",
                // Root in CI containers, where Chromium's sandbox cannot start; the page is ours.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!(
                "--ignore-certificate-errors-spki-list={trusted_spki}"
            ))
            .arg(format!("file://{}", page.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let stderr = child.stderr.take().unwrap();
        let (sender, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Chromium {
            child,
            log,
            reports: Vec::new(),
            _profile: profile,
        }
    }

    /// Waits (bounded) for the page's report starting with `start`; returns it.
    fn wait_report(&mut self, start: &str) -> String {
        if let Some(report) = self.reports.iter().find(|r| r.starts_with(start)) {
            return report.clone();
        }
        let deadline = Instant::now() + BROWSER_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.log.recv_timeout(left) else {
                panic!(
                    "the page reported no {start:?} within {BROWSER_WAIT:?}; its reports: {:?}",
                    self.reports
                );
            };
            if let Some(report) = console_report(&line) {
                self.reports.push(report.to_string());
                if report.starts_with(start) {
                    return report.to_string();
                }
            }
        }
    }

    /// Reports that arrived without being waited for (errors, above all).
    fn drain_reports(&mut self) -> &[String] {
        while let Ok(line) = self.log.try_recv() {
            if let Some(report) = console_report(&line) {
                self.reports.push(report.to_string());
            }
        }
        &self.reports
    }
}

/// The text of a `report()` from the page in one of Chromium's log lines.
fn console_report(line: &str) -> Option<&str> {
    if !line.contains("CONSOLE") {
        return None;
    }
    let start = line.find("\"RINGMQ ")? + "\"RINGMQ ".len();
    let end = line[start..].find("\", source:")? + start;
    Some(&line[start..end])
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The whole group: Chromium's helper processes too. Only the group this test made.
        let group = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) takes plain integers; -group names the group `process_group(0)` made.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------------------------

/// One of the page's connections.
struct PageConnection {
    name: String,
    url: String,
    protocol_version: u8,
    client_id: String,
}

/// The page, MQTT.js and the page's config.js in a temp dir; returns the page's path.
fn write_page(dir: &Path, prefix: &str, connections: &[PageConnection]) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/browser");
    for file in ["page.html", "mqtt.min.js"] {
        std::fs::copy(fixtures.join(file), dir.join(file))
            .unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    let list: Vec<String> = connections
        .iter()
        .map(|c| {
            format!(
                "{{ name: \"{}\", url: \"{}\", protocolVersion: {}, clientId: \"{}\" }}",
                c.name, c.url, c.protocol_version, c.client_id
            )
        })
        .collect();
    let config = format!(
        "const RINGMQ = {{ prefix: \"{prefix}\", connections: [\n  {}\n] }};\n",
        list.join(",\n  ")
    );
    std::fs::write(dir.join("config.js"), config).expect("write config.js");
    dir.join("page.html")
}

/// SHA-256 of the key's SubjectPublicKeyInfo, base64: what Chromium's SPKI list wants (a
/// chain holding a certificate with that key passes Chromium's check).
fn spki_pin(key: &rcgen::KeyPair) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(key.public_key_der()))
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// The broker on `shards` shards with `listen` (plain, for the test's own client), `wss` and
/// `ws`; the page connects four ways, its client ids homed on every shard in turn (so with
/// several shards some are handed over from the shard that accepted them).
fn page_over_ws_and_wss(shards: usize) {
    let Some(chromium) = chromium_binary() else {
        return;
    };
    let dir = TempDir::new("browser");
    let (ca, ca_key) = make_ca("ringmq browser test CA");
    let (server, server_key) = server_cert(&ca, &ca_key);
    // The chain, leaf first, as a server sends it: Chromium finds the pinned CA key in it.
    std::fs::write(dir.path().join("server.pem"), server.pem() + &ca.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();

    let mut config = test_config();
    config.shards = shards;
    let listener = |protocol| ListenerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        protocol,
        ..ListenerConfig::default()
    };
    config.listener = vec![
        ListenerConfig {
            certfile: Some(dir.path().join("server.pem")),
            keyfile: Some(dir.path().join("server.key")),
            ..listener(ListenerProtocol::Wss)
        },
        listener(ListenerProtocol::Ws),
    ];
    let broker = ringmq::broker::Broker::start(config).unwrap_or_else(|e| panic!("start: {e}"));
    let addrs: Vec<SocketAddr> = broker.listener_addrs().to_vec();
    assert_eq!(addrs.len(), 3, "listen, wss and ws");
    let broker = TestBroker::wrap(broker);
    let (wss, ws) = (addrs[1].port(), addrs[2].port());

    let ways = [
        ("wss-v4", format!("wss://127.0.0.1:{wss}/mqtt"), 4),
        ("wss-v5", format!("wss://127.0.0.1:{wss}/mqtt"), 5),
        ("ws-v4", format!("ws://127.0.0.1:{ws}/mqtt"), 4),
        ("ws-v5", format!("ws://127.0.0.1:{ws}/mqtt"), 5),
    ];
    let connections: Vec<PageConnection> = ways
        .iter()
        .enumerate()
        .map(|(k, (name, url, version))| PageConnection {
            name: name.to_string(),
            url: url.clone(),
            protocol_version: *version,
            client_id: unique_id_on(k % shards, shards, &format!("page-{name}")),
        })
        .collect();
    let prefix = unique_topic("browser");
    let page = write_page(dir.path(), &prefix, &connections);

    // The independent client: rumqttc over plain TCP, listening to everything the page says.
    let mut watcher = MqttClient::connect(mqtt_options(broker.addr(), "watcher"));
    let ready = format!("{prefix}/+/ready");
    let out = format!("{prefix}/+/out");
    assert_eq!(
        watcher.subscribe_many(&[(&ready, QoS::AtLeastOnce), (&out, QoS::AtLeastOnce)]),
        vec![Some(QoS::AtLeastOnce); 2]
    );

    let mut browser = Chromium::open(&chromium, &page, &spki_pin(&ca_key));

    // Each connection announces itself once subscribed: "NAME VERSION GRANTED PROPERTIES".
    let mut announced = Vec::new();
    let deadline = Instant::now() + BROWSER_WAIT;
    while announced.len() < ways.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(publish) = watcher.try_recv_publish(left) else {
            panic!(
                "the page announced only {announced:?} within {BROWSER_WAIT:?}; its reports: {:?}",
                browser.drain_reports()
            );
        };
        let text = String::from_utf8(publish.payload.to_vec()).expect("UTF-8 announcement");
        let name = text.split(' ').next().unwrap_or_default().to_string();
        assert_eq!(publish.topic, format!("{prefix}/{name}/ready"), "{text}");
        assert_eq!(publish.qos, QoS::AtLeastOnce);
        announced.push(text);
    }
    announced.sort();
    for (name, _, version) in &ways {
        let text = announced
            .iter()
            .find(|t| t.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} never announced itself: {announced:?}"));
        let words: Vec<&str> = text.split(' ').collect();
        assert_eq!(words[1], version.to_string(), "protocol version: {text}");
        assert_eq!(words[2], "1", "granted QoS 1: {text}");
        if *version == 5 {
            // MQTT.js read our 5.0 CONNACK's properties (ringmq always sends these).
            for property in ["receiveMaximum", "topicAliasMaximum", "maximumPacketSize"] {
                assert!(words[3].contains(property), "{property} in {text}");
            }
        } else {
            assert_eq!(words[3], "-", "no properties in 3.1.1: {text}");
        }
    }

    // The page echoes what it receives: large payloads both ways, distinct per connection.
    let payload_for = |name: &str| {
        let mut payload = format!("to {name}: ").into_bytes();
        payload.extend((0..PAYLOAD_BYTES).map(|i| b'a' + (i % 26) as u8));
        payload
    };
    for (name, _, _) in &ways {
        watcher.publish_acked(
            &format!("{prefix}/{name}/in"),
            QoS::AtLeastOnce,
            false,
            payload_for(name),
        );
    }
    let mut echoed = Vec::new();
    let deadline = Instant::now() + BROWSER_WAIT;
    while echoed.len() < ways.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(publish) = watcher.try_recv_publish(left) else {
            panic!(
                "the page echoed only {echoed:?} within {BROWSER_WAIT:?}; its reports: {:?}",
                browser.drain_reports()
            );
        };
        let name = publish
            .topic
            .strip_prefix(&format!("{prefix}/"))
            .and_then(|rest| rest.strip_suffix("/out"))
            .unwrap_or_else(|| panic!("unexpected topic {}", publish.topic))
            .to_string();
        let mut expected = b"echo:".to_vec();
        expected.extend(payload_for(&name));
        assert!(
            publish.payload[..] == expected[..],
            "{name}: the echo differs ({} bytes, {} expected)",
            publish.payload.len(),
            expected.len()
        );
        assert_eq!(publish.qos, QoS::AtLeastOnce);
        echoed.push(name);
    }
    echoed.sort();
    let mut names: Vec<String> = ways.iter().map(|w| w.0.to_string()).collect();
    names.sort();
    assert_eq!(echoed, names);

    // The page's own view: each connection got its message whole, at QoS 1, and its echo was
    // acknowledged (the report is written at the PUBACK).
    for (name, _, _) in &ways {
        let report = browser.wait_report(&format!("{name} echoed"));
        let expected = format!(
            "{name} echoed {prefix}/{name}/in {} qos=1 acked",
            payload_for(name).len()
        );
        assert_eq!(report, expected);
    }
    let errors: Vec<&String> = browser
        .drain_reports()
        .iter()
        .filter(|r| r.contains(" error"))
        .collect();
    assert!(errors.is_empty(), "the page reported errors: {errors:?}");
    drop(browser);
    watcher.disconnect();
    drop(broker);
}

#[test]
fn mqtt_js_page_over_ws_and_wss_on_1_shard() {
    page_over_ws_and_wss(1);
}

#[test]
fn mqtt_js_page_over_ws_and_wss_on_2_shards() {
    page_over_ws_and_wss(2);
}
