//! ringmq-loadgen: the client side of ringmq's benchmarks. One pinned thread per core, each an
//! io_uring loop over many MQTT connections held as direct descriptors; every payload carries
//! a stamp (intended send time, publisher, sequence) so receivers measure latency, loss,
//! duplicates and reordering without trusting the broker.
//!
//! - `cli`: the command line (scenarios named after the Open MQTT Benchmark Suite).
//! - `plan`: which connections each thread opens, their roles and topics.
//! - `engine`: the per-thread io_uring event loop.
//! - `tls`: the TLS client side (`--tls-ca`), sealing and opening records around the engine's
//!   buffers.
//! - `run`: the main thread: start, progress, drain, stop, add up, write results.
//! - `scrape`: the broker's counters from its metrics endpoint (`--metrics-url`).
//! - `schedule`, `stamp`, `tracker`, `stats`, `svg`: pure pieces, each tested on its own.

pub mod cli;
pub mod engine;
pub mod plan;
pub mod run;
pub mod schedule;
pub mod scrape;
pub mod stamp;
pub mod stats;
pub mod svg;
pub mod tls;
pub mod tracker;
