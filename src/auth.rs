//! Username/password checks against a mosquitto_passwd file, so an existing mosquitto deployment's
//! password file works unchanged.
//!
//! Lines are `username:hash`; blank lines and lines starting with `#` are ignored. Two hash
//! formats, as mosquitto 2.0 writes and reads them (`pw__digest` in its security_default.c):
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 (`-H sha512-pbkdf2`, the default since
//!   2.0: 101 iterations, 12-byte salt);
//! - `$6$<salt>$<hash>`: a single SHA-512 over `password || salt` (`-H sha512`, the 1.6 default).
//!   This is NOT glibc's sha512-crypt, which shares the `$6$` prefix.
//!
//! Salt and hash are standard base64 with padding; the hash is always 64 bytes. Unlike mosquitto,
//! which stops at the first NUL (`strlen`), the whole binary MQTT password is hashed (though under
//! `$7$` HMAC's zero-padding of short keys still makes trailing NULs invisible).
//! A malformed line fails the whole load with its line number: a silently dropped user would be
//! a confusing way to find a typo.
//!
//! MQTT 5 enhanced authentication (`EnhancedAuth`, at the end) is the hook a method such as
//! SCRAM plugs into: the shard asks the registered methods at CONNECT; with none registered,
//! every Authentication Method is refused with 0x8C.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha2::{Digest, Sha512};

const HASH_BYTES: usize = 64;

/// Iterations used for an unknown username, so its check costs about what a known one does and
/// timing does not reveal which usernames exist (mosquitto_passwd's default count).
const DUMMY_ITERATIONS: u32 = 101;

#[derive(Clone)]
enum PasswordHash {
    /// `$6$`: SHA-512(password || salt).
    Sha512 {
        salt: Box<[u8]>,
        hash: [u8; HASH_BYTES],
    },
    /// `$7$`: PBKDF2-HMAC-SHA512(password, salt, iterations), 64 bytes.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Box<[u8]>,
        hash: [u8; HASH_BYTES],
    },
}

impl PasswordHash {
    fn verify(&self, password: &[u8]) -> bool {
        let mut computed = [0u8; HASH_BYTES];
        let expected = match self {
            PasswordHash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                computed.copy_from_slice(&digest.finalize());
                hash
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut computed);
                hash
            }
        };
        constant_time_eq(&computed, expected)
    }
}

/// Compares without an early exit, so the time taken does not tell how many leading bytes of a
/// guess were right.
fn constant_time_eq(a: &[u8; HASH_BYTES], b: &[u8; HASH_BYTES]) -> bool {
    let mut difference = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

/// The users of one password file. Loaded at startup (and on reload); read-only afterwards, so
/// shards can share one behind an `Arc`.
#[derive(Clone)]
pub struct PasswordFile {
    users: HashMap<Box<str>, PasswordHash>,
}

impl fmt::Debug for PasswordFile {
    /// Never prints hashes or salts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish()
    }
}

/// Reads and parses a password file; errors name the path and the line.
pub fn load(path: &Path) -> Result<PasswordFile, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("password file {}: cannot read: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
        format!(
            "password file {}: line {line}: not valid UTF-8",
            path.display()
        )
    })?;
    parse(&text).map_err(|e| format!("password file {}: {e}", path.display()))
}

/// Parses the text of a password file; errors name the line (`line 3: ...`).
pub fn parse(text: &str) -> Result<PasswordFile, String> {
    let mut users = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (username, hash) = parse_line(line).map_err(|e| format!("line {line_number}: {e}"))?;
        if users.insert(username.into(), hash).is_some() {
            return Err(format!(
                "line {line_number}: user {username:?} appears more than once"
            ));
        }
    }
    Ok(PasswordFile { users })
}

fn parse_line(line: &str) -> Result<(&str, PasswordHash), String> {
    let Some((username, hash)) = line.split_once(':') else {
        return Err("expected username:hash (no ':' found)".to_string());
    };
    let username = username.trim();
    let hash = hash.trim();
    if username.is_empty() {
        return Err("empty username".to_string());
    }
    let fields: Vec<&str> = hash.split('$').collect();
    let hash = match fields.as_slice() {
        ["", "6", salt, hash] => PasswordHash::Sha512 {
            salt: decode_salt(salt)?,
            hash: decode_hash(hash)?,
        },
        ["", "7", iterations, salt, hash] => PasswordHash::Pbkdf2Sha512 {
            iterations: match iterations.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => return Err(format!("bad PBKDF2 iteration count {iterations:?}")),
            },
            salt: decode_salt(salt)?,
            hash: decode_hash(hash)?,
        },
        ["", "6", ..] => return Err("expected $6$<salt>$<hash>".to_string()),
        ["", "7", ..] => return Err("expected $7$<iterations>$<salt>$<hash>".to_string()),
        _ => {
            return Err(format!(
                "user {username:?}: unsupported hash (expected $6$ or $7$ from mosquitto_passwd; \
                 plain-text passwords are not accepted)"
            ))
        }
    };
    Ok((username, hash))
}

fn decode_salt(text: &str) -> Result<Box<[u8]>, String> {
    match BASE64.decode(text) {
        Ok(salt) if !salt.is_empty() => Ok(salt.into_boxed_slice()),
        Ok(_) => Err("empty salt".to_string()),
        Err(e) => Err(format!("salt is not valid base64: {e}")),
    }
}

fn decode_hash(text: &str) -> Result<[u8; HASH_BYTES], String> {
    let bytes = BASE64
        .decode(text)
        .map_err(|e| format!("hash is not valid base64: {e}"))?;
    <[u8; HASH_BYTES]>::try_from(bytes.as_slice())
        .map_err(|_| format!("hash is {} bytes, expected {HASH_BYTES}", bytes.len()))
}

impl PasswordFile {
    /// Does `password` match `username`'s hash? An unknown username costs a hash too and fails.
    /// A `$7$` check at 101 iterations is ~200 SHA-512 compressions, about 60-100 us, paid once
    /// per CONNECT on the shard that handles it.
    pub fn check(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(hash) => hash.verify(password),
            None => {
                let mut sink = [0u8; HASH_BYTES];
                pbkdf2::pbkdf2_hmac::<Sha512>(
                    password,
                    b"ringmq-no-user",
                    DUMMY_ITERATIONS,
                    &mut sink,
                );
                std::hint::black_box(sink);
                false
            }
        }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    // Made with the real mosquitto_passwd 2.0.11:
    //   mosquitto_passwd -c -b passwd alice 'alice-secret'
    //   mosquitto_passwd -b passwd bob 'hunter2 with spaces'
    //   mosquitto_passwd -H sha512 -c -b passwd-sha512 carol 'carol-pw'
    //   mosquitto_passwd -H sha512 -b passwd-sha512 dave 'dävé-ünïcode'
    const PBKDF2_FILE: &str = include_str!("../tests/fixtures/passwd");
    const SHA512_FILE: &str = include_str!("../tests/fixtures/passwd-sha512");
    const MIXED_FILE: &str = include_str!("../tests/fixtures/passwd-mixed");

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn assert_users(file: &PasswordFile, users: &[(&str, &str)]) {
        for (username, password) in users {
            assert!(file.check(username, password.as_bytes()), "{username}");
            assert!(!file.check(username, b""), "{username} empty password");
            assert!(!file.check(username, b"wrong"), "{username} wrong password");
            let mut almost = password.as_bytes().to_vec();
            almost.pop();
            assert!(
                !file.check(username, &almost),
                "{username} truncated password"
            );
            almost.extend_from_slice(b"x");
            assert!(
                !file.check(username, &almost),
                "{username} last byte changed"
            );
            let mut longer = password.as_bytes().to_vec();
            longer.push(b'x');
            assert!(!file.check(username, &longer), "{username} longer password");
        }
    }

    #[test]
    fn pbkdf2_sha512_from_mosquitto_passwd() {
        let file = parse(PBKDF2_FILE).unwrap();
        assert_eq!(file.len(), 2);
        assert_users(
            &file,
            &[("alice", "alice-secret"), ("bob", "hunter2 with spaces")],
        );
        // Each user's password belongs to that user only.
        assert!(!file.check("alice", b"hunter2 with spaces"));
        assert!(!file.check("bob", b"alice-secret"));
        assert!(!file.check("mallory", b"alice-secret"));
        assert!(
            !file.check("Alice", b"alice-secret"),
            "usernames are case-sensitive"
        );
    }

    #[test]
    fn sha512_from_mosquitto_passwd() {
        let file = parse(SHA512_FILE).unwrap();
        assert_eq!(file.len(), 2);
        assert_users(&file, &[("carol", "carol-pw"), ("dave", "dävé-ünïcode")]);
    }

    #[test]
    fn mixed_file_with_comments_and_blank_lines() {
        let file = parse(MIXED_FILE).unwrap();
        assert_eq!(file.len(), 4);
        assert!(file.contains("alice") && file.contains("dave"));
        assert!(!file.contains("# ringmq test users, made with mosquitto_passwd 2.0.11"));
        assert_users(&file, &[("alice", "alice-secret"), ("carol", "carol-pw")]);
        // CRLF line endings and blanks around fields, as mosquitto trims them.
        let crlf = MIXED_FILE
            .replace('\n', "\r\n")
            .replace("carol:", "  carol : ");
        let file = parse(&crlf).unwrap();
        assert_users(
            &file,
            &[("bob", "hunter2 with spaces"), ("carol", "carol-pw")],
        );
    }

    #[test]
    fn load_from_disk() {
        let file = load(&fixture("passwd")).unwrap();
        assert_users(&file, &[("alice", "alice-secret")]);
        let file = load(&fixture("passwd-mixed")).unwrap();
        assert_eq!(file.len(), 4);
        assert!(format!("{file:?}").contains("users: 4"));
        assert!(!format!("{file:?}").contains("$7$"));

        let missing = fixture("no-such-passwd");
        let error = load(&missing).unwrap_err();
        assert!(error.contains("no-such-passwd"), "{error}");
        assert!(error.contains("cannot read"), "{error}");

        let error = load(&fixture("passwd-malformed")).unwrap_err();
        assert!(error.contains("passwd-malformed"), "{error}");
        assert!(error.contains("line 3:"), "{error}");
        assert!(error.contains("no ':'"), "{error}");
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let alice = PBKDF2_FILE.lines().next().unwrap();
        let salt = "KfeWf4HGQAH4aWyt";
        let hash = alice.rsplit('$').next().unwrap();
        let cases = [
            ("nocolon".to_string(), "no ':'"),
            (format!(":$7$101${salt}${hash}"), "empty username"),
            ("eve:plaintext".to_string(), "unsupported hash"),
            (format!("eve:$5${salt}${hash}"), "unsupported hash"),
            (
                format!("eve:$6$101${salt}${hash}"),
                "expected $6$<salt>$<hash>",
            ),
            (format!("eve:$7${salt}${hash}"), "expected $7$<iterations>"),
            (format!("eve:$7$0${salt}${hash}"), "iteration count"),
            (format!("eve:$7$-1${salt}${hash}"), "iteration count"),
            (format!("eve:$7$many${salt}${hash}"), "iteration count"),
            (format!("eve:$7$101$!!!${hash}"), "salt is not valid base64"),
            (format!("eve:$7$101$${hash}"), "empty salt"),
            (
                format!("eve:$7$101${salt}$AAAA"),
                "hash is 3 bytes, expected 64",
            ),
            (
                format!("eve:$6${salt}$not*base64"),
                "hash is not valid base64",
            ),
            (alice.to_string(), "appears more than once"),
        ];
        for (bad_line, what) in cases {
            let text = format!("# header\n\n{alice}\n{bad_line}\n");
            let error = match parse(&text) {
                Ok(_) => panic!("accepted {bad_line:?}"),
                Err(error) => error,
            };
            assert!(error.starts_with("line 4: "), "{bad_line:?}: {error}");
            assert!(error.contains(what), "{bad_line:?}: {error}");
        }
        assert_eq!(parse("").unwrap().len(), 0);
        assert!(parse("# only a comment\n\n").unwrap().is_empty());
    }

    #[test]
    fn other_iteration_counts_and_salt_lengths() {
        // mosquitto 2.1 writes longer salts; the iteration count is read from the line.
        let salt = [7u8; 64];
        let mut hash = [0u8; HASH_BYTES];
        pbkdf2::pbkdf2_hmac::<Sha512>(b"pw", &salt, 1000, &mut hash);
        let line = format!(
            "zed:$7$1000${}${}",
            BASE64.encode(salt),
            BASE64.encode(hash)
        );
        let file = parse(&line).unwrap();
        assert!(file.check("zed", b"pw"));
        assert!(!file.check("zed", b"pW"));
    }

    #[test]
    fn sha512_is_password_then_salt() {
        // Pin the `$6$` construction independently of the fixture: SHA-512("abc" || "") is the
        // FIPS 180-2 test vector, and a one-byte salt is appended, not prepended.
        let hash = Sha512::digest(b"abc");
        assert_eq!(
            hash[..8],
            [0xdd, 0xaf, 0x35, 0xa1, 0x93, 0x61, 0x7a, 0xba],
            "FIPS 180-2 SHA-512(\"abc\")"
        );
        let hash = Sha512::digest(b"abc");
        let line = format!("u:$6${}${}", BASE64.encode(b"c"), BASE64.encode(hash));
        let file = parse(&line).unwrap();
        assert!(file.check("u", b"ab"), "password || salt");
        assert!(!file.check("u", b"bc"));
        // Every byte counts here. (Under `$7$`, HMAC zero-pads keys shorter than its block, so
        // a trailing NUL is invisible there, as it is to mosquitto, which stops at the NUL.)
        assert!(!file.check("u", b"ab\0"));
    }

    #[test]
    fn constant_time_eq_compares_every_byte() {
        let a = [1u8; HASH_BYTES];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[HASH_BYTES - 1] = 2;
        assert!(!constant_time_eq(&a, &b));
        b = a;
        b[0] = 0;
        assert!(!constant_time_eq(&a, &b));
    }
}

/// One step of an enhanced authentication exchange (MQTT 5 spec 4.12), as a method answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthStep {
    /// More is needed: the broker sends AUTH 0x18 with this Authentication Data and waits for
    /// the client's next AUTH (SCRAM's server-first message).
    Continue(bytes::Bytes),
    /// Authenticated: CONNACK 0x00 (or AUTH 0x00 on re-authentication), with this data if any
    /// (SCRAM's server-final message).
    Success(Option<bytes::Bytes>),
    /// Refused: CONNACK (or DISCONNECT) with this reason code, e.g. 0x86 or 0x87.
    Fail(crate::protocol::ReasonCode),
}

/// An enhanced authentication method (SCRAM-SHA-256, Kerberos, ...). The broker finds the
/// method a CONNECT names among those registered and hands it each step's Authentication Data;
/// keyed by client id, the method keeps what an exchange needs between steps. Called on the
/// shard thread, once per step, never per message.
pub trait EnhancedAuth: Send + Sync {
    /// The Authentication Method it answers to, compared byte for byte.
    fn method(&self) -> &str;
    /// A step of `client_id`'s exchange: the CONNECT's data first, then each AUTH's.
    fn step(&self, client_id: &str, data: Option<&[u8]>) -> AuthStep;
}

/// The enhanced authentication methods a broker offers. None yet: every Authentication
/// Method gets CONNACK 0x8C [MQTT-4.12.0-1] until one is registered (SCRAM: the security issue).
#[derive(Clone, Default)]
pub struct EnhancedAuthMethods {
    methods: Vec<std::sync::Arc<dyn EnhancedAuth>>,
}

impl fmt::Debug for EnhancedAuthMethods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.methods.iter().map(|m| m.method()))
            .finish()
    }
}

impl EnhancedAuthMethods {
    pub fn register(&mut self, method: std::sync::Arc<dyn EnhancedAuth>) {
        self.methods.push(method);
    }

    /// The first step for a CONNECT naming `method`: `Fail(0x8C)` when no such method is
    /// registered.
    pub fn begin(&self, method: &str, client_id: &str, data: Option<&[u8]>) -> AuthStep {
        match self.methods.iter().find(|m| m.method() == method) {
            Some(m) => m.step(client_id, data),
            None => AuthStep::Fail(crate::protocol::ReasonCode::BadAuthenticationMethod),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}

#[cfg(test)]
mod enhanced_tests {
    use super::*;
    use crate::protocol::ReasonCode;

    struct Echo;

    impl EnhancedAuth for Echo {
        fn method(&self) -> &str {
            "ECHO"
        }
        fn step(&self, _client_id: &str, data: Option<&[u8]>) -> AuthStep {
            match data {
                Some(b"ok") => AuthStep::Success(None),
                Some(data) => AuthStep::Continue(bytes::Bytes::copy_from_slice(data)),
                None => AuthStep::Fail(ReasonCode::NotAuthorized),
            }
        }
    }

    #[test]
    fn an_unregistered_method_is_a_bad_authentication_method() {
        let mut methods = EnhancedAuthMethods::default();
        assert!(methods.is_empty());
        assert_eq!(
            methods.begin("SCRAM-SHA-256", "c", None),
            AuthStep::Fail(ReasonCode::BadAuthenticationMethod)
        );
        methods.register(std::sync::Arc::new(Echo));
        assert_eq!(
            methods.begin("ECHO", "c", Some(b"ok")),
            AuthStep::Success(None)
        );
        assert_eq!(
            methods.begin("ECHO", "c", Some(b"more")),
            AuthStep::Continue(bytes::Bytes::from_static(b"more"))
        );
        assert_eq!(
            methods.begin("echo", "c", Some(b"ok")),
            AuthStep::Fail(ReasonCode::BadAuthenticationMethod),
            "compared byte for byte"
        );
    }
}
