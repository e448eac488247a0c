//! `ringmq`: clap args -> Config -> start shards -> wait for SIGINT/SIGTERM -> stop.
fn main() {
    eprintln!("ringmq: not built yet");
    std::process::exit(1);
}
