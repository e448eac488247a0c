//! The `ringmq` binary as a child process, as an operator runs it: flags (and so a config file),
//! a free loopback port, stderr read line by line on a thread (so the broker never blocks on a
//! full pipe), signals (SIGTERM, SIGKILL, SIGHUP), every wait bounded, SIGKILLed when dropped.
//!
//! Used by the tests of the binary itself (cli, acl, logging, persistence, observability).

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use super::WAIT;

/// The built binary under test.
pub fn ringmq_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringmq"))
}

/// A running `ringmq` process whose stderr lines arrive on a channel; SIGKILLed if the test
/// ends without stopping it.
pub struct Ringmq {
    child: Child,
    pub addr: SocketAddr,
    lines: Receiver<String>,
    /// Every stderr line received so far, in order.
    pub seen: Vec<String>,
}

impl Ringmq {
    /// Starts the binary on a free loopback port with `args` (one shard unless they say
    /// otherwise); returns once it accepts connections.
    pub fn start(args: &[&str]) -> Ringmq {
        Ringmq::start_with_env(args, &[])
    }

    /// As `start`, with these environment variables set (and `RUST_LOG` removed, so the log
    /// level is the one the flags or the config file give).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Ringmq {
        Ringmq::start_configured(args, env, |_| {})
    }

    /// As `start_with_env`, with `configure` applied to the command before each spawn (e.g.
    /// a `pre_exec` that sets a resource limit).
    pub fn start_configured(
        args: &[&str],
        env: &[(&str, &str)],
        configure: impl Fn(&mut Command),
    ) -> Ringmq {
        let shards: &[&str] = if args.contains(&"--shards") {
            &[]
        } else {
            &["--shards", "1"]
        };
        // A port picked by binding :0 and releasing it could be taken in between: retry.
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut command = ringmq_command();
            command
                .args(["--listen", &addr.to_string()])
                .args(shards)
                .args(args)
                .env_remove("RUST_LOG")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            configure(&mut command);
            let mut child = command.spawn().expect("spawn ringmq");
            let lines = read_lines_on_a_thread(&mut child);
            let mut ringmq = Ringmq {
                child,
                addr,
                lines,
                seen: Vec::new(),
            };
            let deadline = Instant::now() + WAIT;
            loop {
                // Accepting there is not enough: another test's broker may have taken the port
                // between our pick and our bind, and ours, still starting, would then be
                // signalled before it blocks SIGTERM. The listening socket must be ours.
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                    && listens_on(ringmq.child.id(), port)
                {
                    return ringmq;
                }
                if let Some(status) = ringmq.try_wait() {
                    // The port was taken, or the configuration refused: next port.
                    ringmq.take_lines(Duration::from_millis(200));
                    last_error = format!("ringmq exited with {status}: {}", ringmq.seen.join("\n"));
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "ringmq did not listen on {addr} within {WAIT:?}"
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("ringmq did not start: {last_error}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: sends a signal to our own child process.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, after: &str) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ringmq ignored {after} for {WAIT:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; the broker must exit with status 0 within WAIT. Returns all of its stderr.
    pub fn stop(mut self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit("SIGTERM");
        assert!(
            status.success(),
            "ringmq exited with {status} after SIGTERM"
        );
        // The pipe closes at the exit: the reader thread's channel ends.
        self.take_lines(WAIT);
        std::mem::take(&mut self.seen)
    }

    /// SIGKILL: no chance to write anything more.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGHUP (reload the password and ACL files); returns the stderr line about it.
    pub fn reload(&mut self) -> String {
        self.signal(libc::SIGHUP);
        self.next_line("SIGHUP")
            .unwrap_or_else(|| panic!("no SIGHUP line on stderr within {WAIT:?}"))
    }

    /// Collects the lines that arrive within `within` (until the pipe closes, at most).
    pub fn take_lines(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
    }

    /// The first line not received before that contains `needle`, within WAIT.
    pub fn next_line(&mut self, needle: &str) -> Option<String> {
        self.next_matching(WAIT, |line| line.contains(needle))
    }

    /// The first line (seen before, or arriving within `within`) containing every needle.
    pub fn wait_line(&mut self, needles: &[&str], within: Duration) -> String {
        let matches = |line: &str| needles.iter().all(|n| line.contains(n));
        if let Some(line) = self.seen.iter().find(|l| matches(l)) {
            return line.clone();
        }
        self.next_matching(within, matches).unwrap_or_else(|| {
            panic!(
                "no stderr line with {needles:?} within {within:?}; lines:\n{}",
                self.seen.join("\n")
            )
        })
    }

    /// The first line arriving within `within` that `matches`; every line is kept in `seen`.
    fn next_matching(
        &mut self,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if matches(&line) {
                return Some(line);
            }
        }
    }

    /// Lines seen so far containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits (bounded) for the process to exit, then returns all of its stderr.
    pub fn stderr_after_exit(&mut self) -> String {
        self.wait_exit("its end");
        self.take_lines(WAIT);
        self.seen.join("\n")
    }
}

impl Drop for Ringmq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines_on_a_thread(child: &mut Child) -> Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (sender, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Runs the binary with `args` (nothing added) expecting it to exit by itself within WAIT,
/// as on a configuration it refuses; returns its exit status and stderr.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = ringmq_command()
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringmq");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut text = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut text);
            }
            return (status, text);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringmq {args:?} kept running for {WAIT:?}; it should have refused to start");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// As `run_to_exit`, with the exit code only (None: killed by a signal).
pub fn refused_start(args: &[&str]) -> (Option<i32>, String) {
    let (status, stderr) = run_to_exit(args);
    (status.code(), stderr)
}

/// Whether process `pid` holds a socket listening on TCP `port` (IPv4 or IPv6): the inodes of
/// the listening sockets in /proc/net/tcp{,6} against the process's descriptors.
fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; state 0A is LISTEN; field 9 is the inode.
            let listening = fields.get(3) == Some(&"0A");
            let on_port = fields
                .get(1)
                .and_then(|local| local.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                == Some(port);
            if let (true, true, Some(inode)) = (listening, on_port, fields.get(9)) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|target| {
            inodes
                .iter()
                .any(|inode| target.to_str() == Some(inode.as_str()))
        })
}
