//! Listeners: what each `[[listener]]` (or `listen`) is once the broker runs, shared by every
//! shard. Each shard has its own socket per listener (SO_REUSEPORT) and one multishot accept
//! on each (`shard::accept`); a connection keeps its listener's index beside its slot
//! (`shard::conn`), which says which transport reads and writes its bytes
//! (`shard::transport`): plain, TLS, WebSocket, or WebSocket over TLS.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::{ListenerConfig, ListenerProtocol};
use crate::tls::TlsListener;

pub struct Listener {
    pub config: ListenerConfig,
    /// `Some` for `mqtt+tls` and `wss`.
    pub tls: Option<TlsListener>,
    /// `ws` and `wss`: MQTT bytes travel in WebSocket frames (`config.path` is the upgrade's).
    pub websocket: bool,
    /// Connections open through this listener in the whole broker, for `connections_max`;
    /// counted from the accept to the slot's release, wherever the connection lives then.
    connections: AtomicU32,
}

impl Listener {
    /// Reads the listener's certificate files; an error names the file and what is wrong.
    pub fn new(config: &ListenerConfig) -> Result<Listener, String> {
        let tls = match config.protocol {
            ListenerProtocol::MqttTls | ListenerProtocol::Wss => Some(
                TlsListener::new(config).map_err(|e| format!("listener {}: {e}", config.bind))?,
            ),
            ListenerProtocol::Mqtt | ListenerProtocol::Ws => None,
        };
        Ok(Listener {
            config: config.clone(),
            tls,
            websocket: matches!(
                config.protocol,
                ListenerProtocol::Ws | ListenerProtocol::Wss
            ),
            connections: AtomicU32::new(0),
        })
    }

    /// Counts one more connection; false when that passes `connections_max` (it is counted
    /// all the same, and released with the connection).
    /// Without a `connections_max` nothing is counted (no shared write per accept).
    pub fn admit(&self) -> bool {
        if self.config.connections_max == 0 {
            return true;
        }
        let count = self.connections.fetch_add(1, Ordering::Relaxed);
        count < self.config.connections_max
    }

    /// A connection admitted through this listener ended.
    pub fn release(&self) {
        if self.config.connections_max > 0 {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }
}
