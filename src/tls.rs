//! TLS for `mqtt+tls` listeners, with rustls on the `ring` provider: no thread of its own, no
//! I/O of its own. A connection's `TlsConn` is fed the ciphertext the shard's multishot recv
//! delivered (`read_tls` from a byte slice), hands back plaintext for the MQTT inbox path, and
//! takes the plaintext outbox to turn into the records the ring sends (`write_tls`). It is a
//! side allocation, made at the connection's first byte, so plain connections (and a TLS one
//! that never speaks) pay nothing for it.
//!
//! Provider: `ring` rather than `aws-lc-rs`: it builds in seconds with the C compiler any Rust
//! box links with, where aws-lc-sys compiles a large C library (and wants cmake on some
//! targets); both give TLS 1.2 and 1.3 with the same suites.
//!
//! Certificates are read from PEM files named as mosquitto names them (`certfile`, `keyfile`,
//! `cafile`); `TlsListener::reload` reads them again, for SIGHUP, and only connections that
//! start afterwards use the new ones.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use crate::config::ListenerConfig;

/// ALPN protocol offered (a client that offers none is accepted too).
pub const ALPN_MQTT: &[u8] = b"mqtt";
/// ALPN protocol of `wss` listeners: the WebSocket upgrade is HTTP/1.1.
pub const ALPN_HTTP: &[u8] = b"http/1.1";

/// A listener's TLS settings: the rustls config new connections start from.
pub struct TlsListener {
    files: ListenerConfig,
    config: RwLock<Arc<ServerConfig>>,
}

impl TlsListener {
    pub fn new(files: &ListenerConfig) -> Result<TlsListener, String> {
        let config = server_config(files)?;
        Ok(TlsListener {
            files: files.clone(),
            config: RwLock::new(config),
        })
    }

    /// The config a new connection starts from (one read lock per handshake).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the certificate, key and CA files again (SIGHUP). On an error the old ones stay
    /// and the error says which file is wrong. Connections already up keep their session.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.files)?;
        *self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        Ok(())
    }

    /// A server side for a new connection.
    pub fn accept(&self) -> Result<TlsConn, rustls::Error> {
        let mut conn = ServerConnection::new(self.current())?;
        // The shard bounds what it hands over: it moves the plaintext outbox in only when the
        // last records are sent, so the outbox cap (`outbox_bytes_max`) stays the bound.
        conn.set_buffer_limit(None);
        Ok(TlsConn {
            conn,
            identity: None,
        })
    }
}

/// One connection's TLS state (boxed beside the connection, see the file doc).
pub struct TlsConn {
    pub conn: ServerConnection,
    /// The client certificate's Common Name, once the handshake verified one.
    pub identity: Option<Box<str>>,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("handshaking", &self.conn.is_handshaking())
            .field("identity", &self.identity)
            .finish()
    }
}

impl TlsConn {
    /// After the handshake: remembers the verified client certificate's Common Name.
    pub fn note_identity(&mut self) {
        if self.identity.is_some() || self.conn.is_handshaking() {
            return;
        }
        self.identity = self
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| common_name(leaf.as_ref()))
            .map(Box::from);
    }
}

/// A TLS connection's state on its way to the client's home shard inside the hand-off message
/// (`mesh::HandOff`).
pub type TlsHandOff = crate::mesh::Carried<TlsConn>;

fn open(path: &Path, what: &str) -> Result<BufReader<File>, String> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut open(path, what)?)
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut open(path, "keyfile")?)
        .map_err(|e| format!("keyfile {}: {e}", path.display()))?
        .ok_or_else(|| {
            format!(
                "keyfile {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
                path.display()
            )
        })
}

/// The rustls config of an `mqtt+tls` (or `wss`) listener: its chain and key, TLS 1.2 and
/// 1.3, ALPN `mqtt` (`http/1.1`), and client certificates verified against `cafile` when `require_certificate`.
pub fn server_config(files: &ListenerConfig) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (Some(certfile), Some(keyfile)) = (&files.certfile, &files.keyfile) else {
        return Err("an mqtt+tls or wss listener needs certfile and keyfile".into());
    };
    let chain = certificates(certfile, "certfile")?;
    let key = private_key(keyfile)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match (&files.cafile, files.require_certificate) {
        (Some(cafile), true) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(cafile, "cafile")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("cafile {}: {e}", cafile.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("cafile {}: {e}", cafile.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "certfile {} / keyfile {}: {e}",
            certfile.display(),
            keyfile.display()
        )
    })?;
    // A browser's `wss` offers `http/1.1` (and h2, which an Upgrade cannot use), and
    // rustls refuses a client whose every offer it lacks.
    let alpn = match files.protocol {
        crate::config::ListenerProtocol::Wss => ALPN_HTTP,
        _ => ALPN_MQTT,
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// One DER element: (tag, contents, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, &b| len << 8 | b as usize);
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// 2.5.4.3, id-at-commonName.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The subject Common Name of a DER certificate (the last one, as mosquitto takes it from
/// OpenSSL's lookup), or `None`. Only a verified certificate is ever passed in; a malformed
/// one gives `None`, never a panic.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (tag, certificate, _) = der_element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    // tbsCertificate: [0] version (optional), serial, signature, issuer, validity, subject.
    let (tag, _, rest) = der_element(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
        tbs = der_element(tbs)?.2; // serial
    } else {
        tbs = rest; // that was the serial
    }
    for _ in 0..3 {
        tbs = der_element(tbs)?.2; // signature, issuer, validity
    }
    let (tag, mut subject, _) = der_element(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut name = None;
    while !subject.is_empty() {
        let (tag, mut set, rest) = der_element(subject)?;
        subject = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (tag, attribute, rest) = der_element(set)?;
            set = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = der_element(attribute)?;
            if tag == OID && oid == OID_COMMON_NAME {
                let (_, text, _) = der_element(value)?;
                name = Some(String::from_utf8(text.to_vec()).ok()?);
            }
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_with_cn(cn: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "ringmq tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn common_name_is_read_from_the_subject() {
        let der = certificate_with_cn("sensor-17");
        assert_eq!(common_name(&der).as_deref(), Some("sensor-17"));
    }

    #[test]
    fn common_name_of_malformed_der_is_none_at_every_cut() {
        let der = certificate_with_cn("sensor-17");
        for cut in 0..der.len() {
            let _ = common_name(&der[..cut]);
        }
        assert_eq!(common_name(b"\x30\x84\xff\xff\xff\xff"), None);
        assert_eq!(common_name(b""), None);
    }
}
