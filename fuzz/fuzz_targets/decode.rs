//! Arbitrary bytes into the decoder, under both protocol versions. Whatever decodes must encode,
//! report its length truthfully, and decode back to the same packet; nothing may panic. And
//! `decode_in` (in place, over the bytes frozen) must read what `decode` reads, packet by
//! packet, and fail where it fails, with the same error.
//!
//! Run: `cargo +nightly fuzz run decode` (seeds in `corpus/decode/seed-*`).

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ringmq::protocol::{
    decode, decode_in, encode, encoded_len, frame_len, Decoded, Packet, ProtocolVersion,
};

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
        in_place_agrees(data, version);
    }
});

fn in_place_agrees(data: &[u8], version: ProtocolVersion) {
    let frozen = Bytes::copy_from_slice(data);
    let mut buf = BytesMut::from(data);
    let mut at = 0;
    loop {
        let before = buf.len();
        match (
            decode(&mut buf, version, PACKET_SIZE_MAX),
            decode_in(&frozen, at, version, PACKET_SIZE_MAX),
        ) {
            (Ok(Some(packet)), Ok(Some((decoded, size)))) => {
                assert_eq!(size, before - buf.len());
                let read = match decoded {
                    Decoded::Publish(publish) => Packet::Publish(publish.into_publish(&frozen)),
                    Decoded::Packet(packet) => packet,
                };
                assert_eq!(read, packet);
                at += size;
            }
            (Ok(None), Ok(None)) => return,
            (Err(expected), Err(got)) => {
                assert_eq!(got, expected);
                return;
            }
            (expected, got) => panic!("decode {expected:?}, decode_in {got:?}"),
        }
    }
}
