//! TLS for the load generator's connections (`--tls-ca`), with rustls on the `ring` provider as
//! the broker uses it. Like the broker, no I/O of its own: the plaintext MQTT outbox is sealed
//! into records in the bytes the ring sends (`seal`), and the ciphertext a multishot recv
//! delivered is opened into the connection's inbox (`open`). A connection's `ClientConnection`
//! is boxed beside it and made only when TLS is on, so plain runs carry one empty pointer.
//!
//! Session resumption is off: every connection makes a full handshake, which is what the
//! `handshake` scenario measures.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// What every TLS connection of a run starts from.
#[derive(Clone, Debug)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    /// The name (or IP address) the broker's certificate must be valid for.
    pub server_name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the certificates in the PEM file `ca`, offers ALPN `alpn` (none when empty), and
    /// checks the broker's certificate against `server_name`.
    pub fn new(ca: &Path, alpn: &str, server_name: &str) -> Result<TlsClient, String> {
        let file = File::open(ca).map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
            let cert = cert.map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("--tls-ca {}: no certificate in it", ca.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if !alpn.is_empty() {
            config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        }
        config.resumption = Resumption::disabled();
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("--tls-server-name {server_name:?}: {e}"))?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The client side of one new connection; its ClientHello is waiting to be sealed.
    pub fn connect(&self) -> Result<Box<ClientConnection>, String> {
        let mut conn = ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        // The engine bounds what it hands over (it seals the outbox only when the records
        // before are sent, and the outbox is capped), as the broker does.
        conn.set_buffer_limit(None);
        Ok(Box::new(conn))
    }
}

/// Moves the plaintext in `outbox` into the session (held there until the handshake is done)
/// and appends every record the session has to send to `sending`.
pub fn seal(tls: &mut ClientConnection, outbox: &mut BytesMut, sending: &mut BytesMut) {
    if !outbox.is_empty() {
        // Unbounded buffer (`connect`): the write takes all of it.
        let _ = tls.writer().write_all(outbox);
        outbox.clear();
    }
    let mut out = sending.writer();
    while tls.wants_write() {
        if tls.write_tls(&mut out).is_err() {
            break;
        }
    }
}

/// Feeds the ciphertext `records` to the session and appends the plaintext they held to
/// `inbox`. An error names what went wrong (a bad record, a failed handshake, a closed session).
pub fn open(
    tls: &mut ClientConnection,
    mut records: &[u8],
    inbox: &mut BytesMut,
) -> Result<(), String> {
    while !records.is_empty() {
        match tls.read_tls(&mut records) {
            Ok(0) => return Err("TLS: the broker closed the session".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("TLS: {e}")),
        }
        let state = tls.process_new_packets().map_err(|e| format!("TLS: {e}"))?;
        let count = state.plaintext_bytes_to_read();
        if count > 0 {
            let start = inbox.len();
            inbox.resize(start + count, 0);
            tls.reader()
                .read_exact(&mut inbox[start..])
                .map_err(|e| format!("TLS: {e}"))?;
        }
    }
    Ok(())
}

/// "TLSv1_3 TLS13_AES_256_GCM_SHA384 mqtt": what a finished handshake agreed on.
pub fn describe(tls: &ClientConnection) -> String {
    let version = tls
        .protocol_version()
        .map_or("?".to_string(), |v| format!("{v:?}"));
    let suite = tls
        .negotiated_cipher_suite()
        .map_or("?".to_string(), |s| format!("{:?}", s.suite()));
    let alpn = tls.alpn_protocol().map_or("no ALPN".to_string(), |p| {
        String::from_utf8_lossy(p).into_owned()
    });
    format!("{version} {suite} {alpn}")
}
