//! ringmq: a thread-per-core MQTT 3.1.1 / 5.0 broker on io_uring.
//!
//! - `protocol`: the codec, bytes in and packets out, shared with the load generator.
//! - `topic`: topic-name and filter validation, the subscription trie, retained messages.
//! - `ring`: the io_uring driver (typed tokens, multishot accept/recv, provided buffers).
//! - `shard`: one pinned thread per core owning its clients, sessions and trie.
//! - `session`: in-flight window, offline queue, will.
//! - `auth`, `acl`, `security`: password and ACL files, reloaded on SIGHUP.
//! - `tls`, `websocket`: the transports of `mqtt+tls`, `ws` and `wss` listeners (no I/O of their own).
//! - `broker`: starts the shards and stops them.
//! - `metrics`: Prometheus `/metrics` over the shards' published counters (`shard::stats`).
//! - `logger`: the `log` backend of the binary (timestamps, levels, a queue so no shard waits
//!   on stderr).

pub mod acl;
pub mod auth;
pub mod broker;
pub mod config;
pub mod listener;
pub mod logger;
pub mod mesh;
pub mod metrics;
pub mod persist;
pub mod protocol;
pub mod ring;
pub mod sched;
pub mod security;
pub mod session;
pub mod shard;
pub mod tls;
pub mod topic;
pub mod websocket;
