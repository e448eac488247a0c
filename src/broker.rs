//! Starts the shards and stops them. The API that main.rs and the integration tests use.

use std::io;
use std::net::SocketAddr;

use crate::config::Config;

/// A running broker: its shard threads, listening on `local_addr()`. Dropping it stops them.
pub struct Broker {
    local_addr: SocketAddr,
}

impl Broker {
    /// Binds the listeners, starts the shard threads, and returns once they accept connections.
    pub fn start(config: Config) -> io::Result<Broker> {
        let _ = config;
        Err(io::Error::other("broker not built yet"))
    }

    /// The address the broker listens on (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops every shard and waits for its thread to end.
    pub fn stop(self) {}
}
