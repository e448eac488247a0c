//! Arbitrary bytes into the decoder, under both protocol versions. Whatever decodes must encode,
//! report its length truthfully, and decode back to the same packet; nothing may panic.
//!
//! Run: `cargo +nightly fuzz run decode` (seeds in `corpus/decode/seed-*`).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmq::protocol::{decode, encode, encoded_len, frame_len, ProtocolVersion};

const PACKET_SIZE_MAX: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let _ = frame_len(data, PACKET_SIZE_MAX);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, PACKET_SIZE_MAX) {
            let mut out = BytesMut::new();
            encode(&packet, version, &mut out).expect("a decoded packet encodes");
            assert_eq!(out.len(), encoded_len(&packet, version));
            let again = decode(&mut out, version, u32::MAX).expect("re-encoded bytes decode");
            assert_eq!(again.as_ref(), Some(&packet));
            assert!(out.is_empty());
        }
    }
});
