//! Certificates made at test time with rcgen, for the TLS, WebSocket and browser tests: a CA,
//! and a server certificate for `localhost` and 127.0.0.1 signed by it. Each test file writes
//! the PEM files it needs into its own temp dir.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A self-signed CA named `name`, and its key.
pub fn make_ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("ca cert");
    (cert, key)
}

/// A server certificate for `localhost` and 127.0.0.1 (CN `localhost`, server auth) signed
/// by `ca`, and its key.
pub fn server_cert(ca: &Certificate, ca_key: &KeyPair) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, ca, ca_key).expect("server cert");
    (cert, key)
}
