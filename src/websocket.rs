//! WebSocket (RFC 6455) for `ws` and `wss` listeners, server side: no I/O and no thread of its
//! own. A connection's `WsConn` is fed the bytes the shard read (or a `wss` connection's TLS
//! plaintext): first the HTTP/1.1 Upgrade request, answered with `101 Switching Protocols`
//! (or a refusal and the close), then client frames, whose unmasked binary payload is the
//! MQTT byte stream handed to the inbox path. Payload is unmasked as it streams in, never
//! buffered by frame: MQTT packets may span frames and a frame may hold several packets, and
//! what a client can make the broker hold stays what the MQTT decoder bounds. The shard's
//! flush turns the MQTT outbox into one unmasked binary frame, behind what the connection
//! owes first (the 101, pongs) and before a close frame (`frame_outbox`).
//!
//! Like TLS it is a side allocation made at the connection's first byte; once the upgrade is
//! done it holds no buffer while idle (about 90 B in all).

use bytes::BytesMut;
use sha1::{Digest, Sha1};

/// Subprotocols accepted, in the client's order of preference (MQTT 3.1.1 and 5.0 say `mqtt`;
/// MQTT 3.1 clients say `mqttv3.1`). A client offering none is accepted without the header.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// An upgrade request (request line and headers) longer than this is refused (431).
pub const REQUEST_SIZE_MAX: usize = 8192;

/// Headers an upgrade request may have.
const HEADERS_MAX: usize = 32;

/// [RFC 6455 1.3] Appended to Sec-WebSocket-Key before hashing.
const KEY_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// [RFC 6455 7.4.1] Status codes of the close frames we send.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
/// Never sent: a close frame without a status code (RFC 6455 7.1.5).
const CLOSE_NO_STATUS: u16 = 1005;
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// [RFC 6455 5.5] Control frames carry at most 125 bytes.
const CONTROL_PAYLOAD_MAX: u64 = 125;

/// What a listener's WebSocket connections are held to.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    /// The request path the upgrade must name (`path`, default `/mqtt`); a query is ignored.
    pub path: &'a str,
    /// Largest frame payload accepted (`limits.packet_size_max`); over it: close 1009.
    pub frame_size_max: u64,
}

/// What feeding bytes gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fed {
    /// Go on: MQTT bytes (maybe none) were appended to the payload.
    Open,
    /// The connection ends: write what it owes (a refusal, or a close frame), then shut it.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the HTTP Upgrade request.
    Request,
    /// Reading frames.
    Open,
    /// A close frame is queued or sent, or the upgrade was refused: input is ignored.
    Closed,
}

/// One connection's WebSocket state (boxed beside the connection, see the file doc).
pub struct WsConn {
    phase: Phase,
    /// The Upgrade request so far while `Request`; then a control frame's payload so far.
    scratch: Vec<u8>,
    /// Owed to the client ahead of the framed outbox: the 101 or a refusal, pongs.
    out: Vec<u8>,
    /// A close frame to send after the outbox (`CLOSE_NO_STATUS`: one without a code).
    close_code: Option<u16>,
    /// The close frame (or a refusal) went into the outbox: nothing is framed after it.
    close_sent: bool,
    /// The frame header being read: 2 bytes, 0/2/8 of extended length, 4 of mask.
    header: [u8; 14],
    header_len: u8,
    /// The header is read: `remaining` payload bytes of the frame follow.
    in_payload: bool,
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes of the frame unmasked so far, mod 4.
    mask_offset: u8,
    /// The frame's first byte (FIN and opcode).
    first: u8,
    /// A fragmented binary message is in progress: continuation frames are expected.
    in_message: bool,
}

// An idle connection's WebSocket cost beside a plain one's (DESIGN: 512 B per idle connection).
const _: () = assert!(std::mem::size_of::<WsConn>() <= 96);

impl Default for WsConn {
    fn default() -> WsConn {
        WsConn::new()
    }
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("phase", &self.phase)
            .field("close_code", &self.close_code)
            .finish()
    }
}

impl WsConn {
    pub fn new() -> WsConn {
        WsConn {
            phase: Phase::Request,
            scratch: Vec::new(),
            out: Vec::new(),
            close_code: None,
            close_sent: false,
            header: [0; 14],
            header_len: 0,
            in_payload: false,
            remaining: 0,
            mask: [0; 4],
            mask_offset: 0,
            first: 0,
            in_message: false,
        }
    }

    /// Something is owed to the client that the outbox does not hold.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() || self.close_code.is_some()
    }

    /// The connection is ending (a close frame was received or queued, or the upgrade was
    /// refused).
    pub fn closing(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Feeds bytes read from the client; the MQTT bytes they carried are appended to
    /// `payload`, answers (101, pong, close) are queued for `frame_outbox`.
    pub fn feed(&mut self, mut input: &[u8], payload: &mut Vec<u8>, settings: Settings) -> Fed {
        if self.phase == Phase::Request {
            if let Some(fed) = self.feed_request(&mut input, settings.path) {
                return fed;
            }
        }
        while !input.is_empty() {
            if self.phase == Phase::Closed {
                return Fed::Close;
            }
            if !self.in_payload {
                if let Err(code) = self.read_header(&mut input, settings.frame_size_max) {
                    return self.fail(code);
                }
                // A header still partial took all the input; an empty frame ended in it.
                if !self.in_payload {
                    continue;
                }
            }
            let take = self.remaining.min(input.len() as u64) as usize;
            let (bytes, rest) = input.split_at(take);
            input = rest;
            let target = if self.first & 0x08 != 0 {
                &mut self.scratch
            } else {
                &mut *payload
            };
            let start = target.len();
            target.extend_from_slice(bytes);
            unmask(&mut target[start..], self.mask, self.mask_offset);
            self.mask_offset = ((self.mask_offset as usize + take) % 4) as u8;
            self.remaining -= take as u64;
            if self.remaining == 0 {
                self.end_frame();
            }
        }
        if self.phase == Phase::Closed {
            Fed::Close
        } else {
            Fed::Open
        }
    }

    /// Reads the Upgrade request; `None` when it is answered and frames may follow in
    /// `input`, `Some` to stop here (more bytes needed, or refused).
    fn feed_request(&mut self, input: &mut &[u8], path: &str) -> Option<Fed> {
        let before = self.scratch.len();
        let take = input.len().min(REQUEST_SIZE_MAX - before);
        self.scratch.extend_from_slice(&input[..take]);
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut request = httparse::Request::new(&mut headers);
        let end = match request.parse(&self.scratch) {
            Ok(httparse::Status::Complete(end)) => end,
            Ok(httparse::Status::Partial) if self.scratch.len() < REQUEST_SIZE_MAX => {
                *input = &[];
                return Some(Fed::Open);
            }
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Some(self.refuse(431, "Request Header Fields Too Large", false));
            }
            Err(_) => return Some(self.refuse(400, "Bad Request", false)),
        };
        let answer = upgrade_answer(&request, path);
        *input = &input[end - before..];
        self.scratch = Vec::new();
        match answer {
            Ok((accept, protocol)) => {
                self.out.extend_from_slice(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Accept: ",
                );
                self.out.extend_from_slice(accept.as_bytes());
                if let Some(protocol) = protocol {
                    self.out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
                    self.out.extend_from_slice(protocol.as_bytes());
                }
                self.out.extend_from_slice(b"\r\n\r\n");
                self.phase = Phase::Open;
                None
            }
            Err((status, reason)) => Some(self.refuse(status, reason, status == 426)),
        }
    }

    /// An HTTP refusal, then the close: no frame is ever sent on this connection.
    fn refuse(&mut self, status: u16, reason: &str, version: bool) -> Fed {
        self.scratch = Vec::new();
        self.out.clear();
        let version = if version {
            "Sec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        self.out.extend_from_slice(
            format!(
                "HTTP/1.1 {status} {reason}\r\n{version}Connection: close\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        );
        self.phase = Phase::Closed;
        self.close_sent = true;
        Fed::Close
    }

    /// A client broke the protocol: a close frame with `code`, then the close.
    fn fail(&mut self, code: u16) -> Fed {
        self.phase = Phase::Closed;
        self.close_code = Some(code);
        self.scratch = Vec::new();
        Fed::Close
    }

    /// Reads header bytes from `input`; sets `in_payload` once the header is whole and valid.
    fn read_header(&mut self, input: &mut &[u8], frame_size_max: u64) -> Result<(), u16> {
        loop {
            let needed = self.header_needed();
            let have = self.header_len as usize;
            if have == needed {
                break;
            }
            if input.is_empty() {
                return Ok(());
            }
            let take = (needed - have).min(input.len());
            self.header[have..have + take].copy_from_slice(&input[..take]);
            self.header_len += take as u8;
            *input = &input[take..];
            if have < 2 && self.header_len >= 2 && self.header[1] & 0x80 == 0 {
                // [RFC 6455 5.1] A client masks every frame; the server closes on one that
                // is not masked.
                return Err(CLOSE_PROTOCOL_ERROR);
            }
        }
        let first = self.header[0];
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0f;
        let (len, mask_at) = match self.header[1] & 0x7f {
            126 => (
                u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
                4,
            ),
            127 => {
                let mut len = [0; 8];
                len.copy_from_slice(&self.header[2..10]);
                (u64::from_be_bytes(len), 10)
            }
            len => (len as u64, 2),
        };
        if first & 0x70 != 0 || len >> 63 != 0 {
            // No extension was negotiated, so RSV bits must be 0 [RFC 6455 5.2].
            return Err(CLOSE_PROTOCOL_ERROR);
        }
        if opcode & 0x08 != 0 {
            let known = matches!(opcode, OP_CLOSE | OP_PING | OP_PONG);
            if !known || !fin || len > CONTROL_PAYLOAD_MAX {
                return Err(CLOSE_PROTOCOL_ERROR);
            }
        } else {
            match opcode {
                OP_CONTINUATION if self.in_message => {}
                OP_BINARY if !self.in_message => {}
                // MQTT over WebSocket is binary [MQTT-6.0.0-1]: a text frame is unsupported data.
                OP_TEXT if !self.in_message => return Err(CLOSE_UNSUPPORTED_DATA),
                _ => return Err(CLOSE_PROTOCOL_ERROR),
            }
            if len > frame_size_max {
                return Err(CLOSE_TOO_BIG);
            }
        }
        self.mask
            .copy_from_slice(&self.header[mask_at..mask_at + 4]);
        self.mask_offset = 0;
        self.first = first;
        self.remaining = len;
        self.in_payload = true;
        self.header_len = 0;
        if len == 0 {
            self.end_frame();
        }
        Ok(())
    }

    /// Header bytes this frame has: 2 until the length byte is read, then all of them.
    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + 4
    }

    /// A frame's payload is all in.
    fn end_frame(&mut self) {
        self.in_payload = false;
        let fin = self.first & 0x80 != 0;
        match self.first & 0x0f {
            OP_CONTINUATION | OP_BINARY => self.in_message = !fin,
            OP_PING => {
                // [RFC 6455 5.5.3] A pong with the ping's payload.
                self.out
                    .extend_from_slice(&frame_header(OP_PONG, self.scratch.len()));
                self.out.extend_from_slice(&self.scratch);
            }
            OP_CLOSE => {
                // [RFC 6455 5.5.1] Answer a close with a close (its code echoed), then end.
                let code = match self.scratch.len() {
                    0 => CLOSE_NO_STATUS,
                    1 => CLOSE_PROTOCOL_ERROR,
                    _ => {
                        let code = u16::from_be_bytes([self.scratch[0], self.scratch[1]]);
                        if std::str::from_utf8(&self.scratch[2..]).is_err() {
                            CLOSE_INVALID_PAYLOAD
                        } else if close_code_valid(code) {
                            code
                        } else {
                            CLOSE_PROTOCOL_ERROR
                        }
                    }
                };
                self.close_code = Some(code);
                self.phase = Phase::Closed;
            }
            _ => {}
        }
        if self.scratch.capacity() > 0 {
            self.scratch = Vec::new();
        }
    }

    /// At the flush (the send before it done): what the connection owes, the MQTT outbox as
    /// one unmasked binary frame, and a queued close frame, in that order, in place in
    /// `outbox`. After the close frame nothing more is framed. True when these are the
    /// connection's last bytes (a close frame or a refusal): a `wss` connection ends its TLS
    /// session after them.
    pub fn frame_outbox(&mut self, outbox: &mut BytesMut) -> bool {
        let refusal = self.close_sent && !self.out.is_empty();
        if self.close_sent {
            // Nothing is framed after a close frame or a refusal (which `out` may still hold).
            outbox.clear();
        }
        let data = outbox.len();
        let header = frame_header(OP_BINARY, data);
        let header: &[u8] = if data > 0 { &header } else { &[] };
        let prefix = self.out.len() + header.len();
        if prefix > 0 {
            outbox.resize(data + prefix, 0);
            outbox.copy_within(0..data, prefix);
            outbox[..self.out.len()].copy_from_slice(&self.out);
            outbox[self.out.len()..prefix].copy_from_slice(header);
        }
        if self.out.capacity() > 0 {
            self.out = Vec::new();
        }
        if let Some(code) = self.close_code.take() {
            if code == CLOSE_NO_STATUS {
                outbox.extend_from_slice(&[0x80 | OP_CLOSE, 0]);
            } else {
                outbox.extend_from_slice(&[0x80 | OP_CLOSE, 2]);
                outbox.extend_from_slice(&code.to_be_bytes());
            }
            self.close_sent = true;
            return true;
        }
        refusal
    }
}

/// The header of an unmasked final frame of `len` bytes, padded to 10 bytes: the first
/// `frame_header_len(len)` count.
fn frame_header(opcode: u8, len: usize) -> HeaderBytes {
    let mut header = HeaderBytes {
        bytes: [0; 10],
        len: 0,
    };
    header.bytes[0] = 0x80 | opcode;
    if len < 126 {
        header.bytes[1] = len as u8;
        header.len = 2;
    } else if len <= u16::MAX as usize {
        header.bytes[1] = 126;
        header.bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        header.len = 4;
    } else {
        header.bytes[1] = 127;
        header.bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        header.len = 10;
    }
    header
}

struct HeaderBytes {
    bytes: [u8; 10],
    len: usize,
}

impl std::ops::Deref for HeaderBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// [RFC 6455 7.4] Codes a close frame may carry on the wire.
fn close_code_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// [RFC 6455 5.3] XOR with the mask, from byte `offset` of the frame's payload.
fn unmask(bytes: &mut [u8], mask: [u8; 4], offset: u8) {
    let mut rotated = [0; 4];
    for (i, byte) in rotated.iter_mut().enumerate() {
        *byte = mask[(i + offset as usize) % 4];
    }
    let mut chunks = bytes.chunks_exact_mut(4);
    for chunk in &mut chunks {
        for (byte, m) in chunk.iter_mut().zip(rotated) {
            *byte ^= m;
        }
    }
    for (byte, m) in chunks.into_remainder().iter_mut().zip(rotated) {
        *byte ^= m;
    }
}

/// Checks an Upgrade request; `Ok((Sec-WebSocket-Accept, subprotocol chosen))`, or the HTTP
/// status to refuse it with.
fn upgrade_answer(
    request: &httparse::Request,
    path: &str,
) -> Result<(String, Option<&'static str>), (u16, &'static str)> {
    if request.method != Some("GET") {
        return Err((405, "Method Not Allowed"));
    }
    let target = request.path.unwrap_or("");
    let target = target.split('?').next().unwrap_or("");
    if target != path {
        return Err((404, "Not Found"));
    }
    let header = |name: &'static str| header_values(request, name);
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|value| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err((400, "Bad Request"));
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err((426, "Upgrade Required"));
    }
    let Some(key) = header("sec-websocket-key").next().map(str::trim) else {
        return Err((400, "Bad Request"));
    };
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    if engine.decode(key).map_or(true, |nonce| nonce.len() != 16) {
        // [RFC 6455 4.1] The key is a base64-encoded 16-byte nonce.
        return Err((400, "Bad Request"));
    }
    let protocol = header("sec-websocket-protocol")
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find_map(|offered| SUBPROTOCOLS.iter().copied().find(|&p| p == offered));
    Ok((accept_key(key), protocol))
}

/// The values of every header `name` (headers may repeat).
fn header_values<'a>(
    request: &'a httparse::Request,
    name: &'static str,
) -> impl Iterator<Item = &'a str> + 'a {
    request
        .headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
}

/// [RFC 6455 4.2.2] base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(KEY_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        path: "/mqtt",
        frame_size_max: 1024,
    };

    fn request(path: &str, protocol: Option<&str>) -> Vec<u8> {
        let protocol = protocol.map_or(String::new(), |p| {
            format!("Sec-WebSocket-Protocol: {p}\r\n")
        });
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
        )
        .into_bytes()
    }

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![first];
        match payload.len() {
            len if len < 126 => frame.push(0x80 | len as u8),
            len if len <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    fn drain(ws: &mut WsConn) -> Vec<u8> {
        let mut outbox = BytesMut::new();
        ws.frame_outbox(&mut outbox);
        outbox.to_vec()
    }

    #[test]
    fn accept_key_is_the_rfc_example() {
        // RFC 6455 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_is_answered_with_the_subprotocol_chosen() {
        for (offered, chosen) in [
            (Some("mqtt"), Some("mqtt")),
            (Some("foo, mqttv3.1, mqtt"), Some("mqttv3.1")),
            (Some("foo"), None),
            (None, None),
        ] {
            let mut ws = WsConn::new();
            let mut payload = Vec::new();
            assert_eq!(
                ws.feed(&request("/mqtt", offered), &mut payload, SETTINGS),
                Fed::Open
            );
            let answer = String::from_utf8(drain(&mut ws)).unwrap();
            assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
            assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
            match chosen {
                Some(p) => assert!(answer.contains(&format!("Sec-WebSocket-Protocol: {p}\r\n"))),
                None => assert!(!answer.contains("Sec-WebSocket-Protocol")),
            }
        }
    }

    #[test]
    fn refusals() {
        let cases: [(Vec<u8>, &str); 5] = [
            (request("/other", None), "404"),
            (b"POST /mqtt HTTP/1.1\r\n\r\n".to_vec(), "405"),
            (b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "400"),
            (b"\x10\x0c\x00\x04MQTT".to_vec(), "400"),
            (
                String::from_utf8(request("/mqtt", None))
                    .unwrap()
                    .replace("Version: 13", "Version: 8")
                    .into_bytes(),
                "426",
            ),
        ];
        for (bytes, status) in cases {
            let mut ws = WsConn::new();
            assert_eq!(ws.feed(&bytes, &mut Vec::new(), SETTINGS), Fed::Close);
            let answer = String::from_utf8(drain(&mut ws)).unwrap();
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{status}: {answer}"
            );
            assert!(ws.closing());
        }
        let mut ws = WsConn::new();
        let endless = vec![b'a'; REQUEST_SIZE_MAX + 1];
        assert_eq!(
            ws.feed(b"GET /mqtt HTTP/1.1\r\nX: ", &mut Vec::new(), SETTINGS),
            Fed::Open
        );
        assert_eq!(ws.feed(&endless, &mut Vec::new(), SETTINGS), Fed::Close);
        assert!(String::from_utf8(drain(&mut ws))
            .unwrap()
            .starts_with("HTTP/1.1 431 "));
    }

    /// Frames the client might send, and the MQTT bytes they carry.
    fn sample_stream() -> (Vec<u8>, Vec<u8>) {
        let mqtt: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let mut stream = request("/mqtt?x=1", Some("mqtt"));
        stream.extend(masked(0x82, &mqtt[..3]));
        stream.extend(masked(0x89, b"hi")); // ping, between two binary frames
        stream.extend(masked(0x02, &mqtt[3..200])); // a fragmented message ...
        stream.extend(masked(0x8A, b"")); // ... a pong inside it ...
        stream.extend(masked(0x00, &mqtt[200..201]));
        stream.extend(masked(0x80, &mqtt[201..201])); // ... an empty final continuation
        stream.extend(masked(0x82, &mqtt[201..]));
        (stream, mqtt)
    }

    #[test]
    fn frames_do_not_depend_on_where_reads_split() {
        let (stream, mqtt) = sample_stream();
        for cut in 0..stream.len() {
            for second in [cut, (cut + 7).min(stream.len())] {
                let mut ws = WsConn::new();
                let mut payload = Vec::new();
                for part in [&stream[..cut], &stream[cut..second], &stream[second..]] {
                    assert_eq!(
                        ws.feed(part, &mut payload, SETTINGS),
                        Fed::Open,
                        "cut {cut}"
                    );
                }
                assert_eq!(payload, mqtt, "cut at {cut}, {second}");
                let out = drain(&mut ws);
                assert!(out.ends_with(&[0x8A, 2, b'h', b'i']), "the pong, cut {cut}");
            }
        }
    }

    #[test]
    fn protocol_violations_close_with_their_code() {
        let unmasked = {
            let mut frame = masked(0x82, b"abc");
            frame[1] &= 0x7f;
            frame.truncate(2);
            frame.extend_from_slice(b"abc");
            frame
        };
        let cases: [(Vec<u8>, u16); 8] = [
            (unmasked, CLOSE_PROTOCOL_ERROR),
            (masked(0x81, b"text"), CLOSE_UNSUPPORTED_DATA),
            (masked(0x82, &[0; 1025]), CLOSE_TOO_BIG),
            (masked(0x80, b"no message"), CLOSE_PROTOCOL_ERROR),
            (masked(0xC2, b"rsv1"), CLOSE_PROTOCOL_ERROR),
            (masked(0x83, b"opcode 3"), CLOSE_PROTOCOL_ERROR),
            (masked(0x09, b"fragmented ping"), CLOSE_PROTOCOL_ERROR),
            (masked(0x89, &[0; 126]), CLOSE_PROTOCOL_ERROR),
        ];
        for (frame, code) in cases {
            let mut ws = WsConn::new();
            let mut payload = Vec::new();
            let mut stream = request("/mqtt", None);
            stream.extend(frame);
            assert_eq!(ws.feed(&stream, &mut payload, SETTINGS), Fed::Close);
            assert!(payload.is_empty());
            let out = drain(&mut ws);
            let close = [0x88, 2, (code >> 8) as u8, code as u8];
            assert!(out.ends_with(&close), "code {code}: {out:?}");
            let mut outbox = BytesMut::from(&b"more"[..]);
            ws.frame_outbox(&mut outbox);
            assert!(outbox.is_empty(), "nothing after the close frame");
        }
    }

    #[test]
    fn close_is_answered_and_outbox_framed_before_it() {
        let mut ws = WsConn::new();
        let mut stream = request("/mqtt", None);
        stream.extend(masked(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        stream.extend(masked(0x82, b"ignored"));
        let mut payload = Vec::new();
        assert_eq!(ws.feed(&stream, &mut payload, SETTINGS), Fed::Close);
        assert!(payload.is_empty());
        let mut outbox = BytesMut::from(&[0xd0u8, 0][..]);
        ws.frame_outbox(&mut outbox);
        assert!(outbox.starts_with(b"HTTP/1.1 101 "));
        assert!(outbox.ends_with(&[0x82, 2, 0xd0, 0, 0x88, 2, 0x03, 0xe8]));
    }

    #[test]
    fn outbound_frame_lengths() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let mut ws = WsConn::new();
            ws.phase = Phase::Open;
            let mut outbox = BytesMut::from(&vec![7u8; len][..]);
            ws.frame_outbox(&mut outbox);
            let header = match len {
                0 => 0,
                l if l < 126 => 2,
                l if l <= 65535 => 4,
                _ => 10,
            };
            assert_eq!(outbox.len(), len + header);
            if len > 0 {
                assert_eq!(outbox[0], 0x82);
                assert!(outbox[header..].iter().all(|&b| b == 7));
            }
        }
    }
}
